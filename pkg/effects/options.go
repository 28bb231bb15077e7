package effects

import (
	"fmt"
	"time"
)

// KindOptions are the limits of one kind, set at registration with
// [HandlerOption]s. A zero field means "the dispatcher's default" (its
// EFFECTS_* setting); EFFECTS_KIND_CONCURRENCY and EFFECTS_KIND_RATE, when
// they name the kind, override what the code set.
type KindOptions struct {
	// Concurrency is how many effects of the kind run at once in one
	// dispatcher process.
	Concurrency int
	// Rate caps how often an attempt of the kind starts, across all
	// dispatcher processes sharing the NATS account.
	Rate Rate
	// AttemptTimeout bounds one attempt.
	AttemptTimeout time.Duration
	// MaxAttempts is how many attempts an effect gets before it fails.
	MaxAttempts int
	// MaxRetryDelay caps every delay before a retry: the backoff,
	// [RetryAfter] and a Retry-After header.
	MaxRetryDelay time.Duration
	// CompletionDeadline is, for an async handler, how long after it
	// started the work its completion may take; past it the effect gets a
	// new attempt.
	CompletionDeadline time.Duration
}

// Rate is a number of attempts per period; the zero Rate is no limit.
type Rate struct {
	N   int
	Per time.Duration
}

// IsZero reports whether r sets no limit.
func (r Rate) IsZero() bool { return r.N == 0 }

// Interval is the spacing between two attempts at this rate.
func (r Rate) Interval() time.Duration {
	if r.N <= 0 {
		return 0
	}
	return r.Per / time.Duration(r.N)
}

func (r Rate) String() string {
	if r.IsZero() {
		return "unlimited"
	}
	switch r.Per {
	case time.Second:
		return fmt.Sprintf("%d/s", r.N)
	case time.Minute:
		return fmt.Sprintf("%d/m", r.N)
	case time.Hour:
		return fmt.Sprintf("%d/h", r.N)
	}
	return fmt.Sprintf("%d/%s", r.N, r.Per)
}

// HandlerOption sets one of a kind's [KindOptions] at registration.
type HandlerOption func(*KindOptions)

// Concurrency sets how many effects of the kind run at once per process.
func Concurrency(n int) HandlerOption { return func(o *KindOptions) { o.Concurrency = n } }

// RateLimit lets at most n attempts of the kind start per period, across
// every dispatcher process of the deployment.
func RateLimit(n int, per time.Duration) HandlerOption {
	return func(o *KindOptions) { o.Rate = Rate{N: n, Per: per} }
}

// AttemptTimeout bounds one attempt of the kind.
func AttemptTimeout(d time.Duration) HandlerOption {
	return func(o *KindOptions) { o.AttemptTimeout = d }
}

// MaxAttempts sets how many attempts an effect of the kind gets.
func MaxAttempts(n int) HandlerOption { return func(o *KindOptions) { o.MaxAttempts = n } }

// MaxRetryDelay caps every delay before a retry of the kind.
func MaxRetryDelay(d time.Duration) HandlerOption {
	return func(o *KindOptions) { o.MaxRetryDelay = d }
}

// CompletionDeadline sets, for an async handler, how long its work may take
// to complete the effect before it gets a new attempt.
func CompletionDeadline(d time.Duration) HandlerOption {
	return func(o *KindOptions) { o.CompletionDeadline = d }
}

// Validate names the option that is wrong.
func (o KindOptions) Validate() error {
	switch {
	case o.Concurrency < 0:
		return fmt.Errorf("concurrency %d is negative", o.Concurrency)
	case o.Rate.N < 0 || (o.Rate.N > 0 && o.Rate.Per <= 0):
		return fmt.Errorf("rate %d per %s: want a positive count per positive period", o.Rate.N, o.Rate.Per)
	case o.Rate.N > 0 && o.Rate.Interval() <= 0:
		return fmt.Errorf("rate %s is too fast: at most one attempt per nanosecond", o.Rate)
	case o.AttemptTimeout < 0:
		return fmt.Errorf("attempt timeout %s is negative", o.AttemptTimeout)
	case o.MaxAttempts < 0:
		return fmt.Errorf("max attempts %d is negative", o.MaxAttempts)
	case o.MaxRetryDelay < 0:
		return fmt.Errorf("max retry delay %s is negative", o.MaxRetryDelay)
	case o.CompletionDeadline < 0:
		return fmt.Errorf("completion deadline %s is negative", o.CompletionDeadline)
	}
	return nil
}
