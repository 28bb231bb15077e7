package dispatcher

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// Config configures a [Dispatcher]. The zero value of a field means its
// default; [Config.WithDefaults] fills them in.
type Config struct {
	// Concurrency is how many effects of one kind run at once in this
	// process, and how many messages of that kind are pulled ahead.
	// EFFECTS_CONCURRENCY, default 100.
	Concurrency int
	// HandlerTimeout bounds one attempt; its context is cancelled then, and
	// an attempt still running is given up and retried.
	// EFFECTS_HANDLER_TIMEOUT, default 60s.
	HandlerTimeout time.Duration
	// MaxAttempts is how many attempts an effect gets before it fails.
	// EFFECTS_MAX_ATTEMPTS, default 10.
	MaxAttempts int
	// RetryBase is the delay after the first failed attempt; it doubles per
	// attempt, with jitter. EFFECTS_RETRY_BASE, default 1s.
	RetryBase time.Duration
	// RetryMax caps every retry delay — backoff, effects.RetryAfter,
	// http_request's Retry-After — unless a kind sets its own
	// MaxRetryDelay. At most 9/10 of the stream max age.
	// EFFECTS_RETRY_MAX, default 5m.
	RetryMax time.Duration
	// AckWait is how long JetStream waits for an ack before redelivering to
	// another dispatcher: how long an effect whose dispatcher crashed waits.
	// It must exceed every kind's attempt timeout by at least AckWaitMargin:
	// messages are pulled ahead (up to the kind's concurrency), and their
	// ack timers run while they wait for a worker, which can take one whole
	// attempt. A message held longer (a rate-limit wait, an async effect
	// waiting for its completion) is renewed with InProgress every
	// AckWait/3. EFFECTS_ACK_WAIT, default (0): each kind's attempt timeout
	// + 30s (90s).
	AckWait time.Duration
	// MaxAckPending bounds the messages of one kind that are out at once
	// across all dispatcher processes, including those waiting out a retry
	// delay. EFFECTS_MAX_ACK_PENDING, default 10000.
	MaxAckPending int
	// ShutdownTimeout bounds the whole stop after SIGTERM: running handlers
	// may finish until a fifth of it (at most 3s) before its end, then are
	// interrupted and their effects go back to the stream; completions
	// still waiting for their PubAck at its end are left to redelivery.
	// EFFECTS_SHUTDOWN_TIMEOUT, default 30s.
	ShutdownTimeout time.Duration
	// CompletionDeadline is how long an async handler's work may take to
	// publish the completion before the effect gets a new attempt.
	// EFFECTS_COMPLETION_DEADLINE, default 1h.
	CompletionDeadline time.Duration
	// KindConcurrency overrides Concurrency, and what the code registered,
	// per kind. EFFECTS_KIND_CONCURRENCY ("send_email=5,http_request=50").
	KindConcurrency map[string]int
	// KindRate limits how often attempts of a kind start, across all
	// dispatcher processes; it overrides what the code registered.
	// EFFECTS_KIND_RATE ("send_email=10/s,sms=600/m"; s, m or h).
	KindRate map[string]effects.Rate
	// Streams are the stream settings (EFFECTS_STREAM_MAX_AGE,
	// EFFECTS_DUPLICATE_WINDOW, EFFECTS_STREAM_REPLICAS).
	Streams effects.StreamOptions
}

// AckWaitMargin is how much longer than the handler timeout the ack wait must
// be: the most a worker is held after its handler's deadline (the grace for a
// handler to return, and the completion publish).
const AckWaitMargin = interruptGrace + publishTimeout + 4*time.Second

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 100
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 10
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 10000
	}
	def(&c.HandlerTimeout, 60*time.Second)
	def(&c.RetryBase, time.Second)
	def(&c.RetryMax, 5*time.Minute)
	def(&c.ShutdownTimeout, 30*time.Second)
	def(&c.CompletionDeadline, time.Hour)
	c.Streams = c.Streams.WithDefaults()
	return c
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("EFFECTS_CONCURRENCY=%d: want at least 1", c.Concurrency)
	case c.HandlerTimeout <= 0:
		return fmt.Errorf("EFFECTS_HANDLER_TIMEOUT=%s: want a positive duration", c.HandlerTimeout)
	case c.MaxAttempts < 1:
		return fmt.Errorf("EFFECTS_MAX_ATTEMPTS=%d: want at least 1", c.MaxAttempts)
	case c.RetryBase <= 0:
		return fmt.Errorf("EFFECTS_RETRY_BASE=%s: want a positive duration", c.RetryBase)
	case c.RetryMax < c.RetryBase:
		return fmt.Errorf("EFFECTS_RETRY_MAX=%s: want at least EFFECTS_RETRY_BASE (%s)", c.RetryMax, c.RetryBase)
	case c.AckWait != 0 && c.AckWait < c.HandlerTimeout+AckWaitMargin:
		return fmt.Errorf("EFFECTS_ACK_WAIT=%s: want at least EFFECTS_HANDLER_TIMEOUT (%s) + %s: an effect pulled ahead may wait that long for a worker",
			c.AckWait, c.HandlerTimeout, AckWaitMargin)
	case c.MaxAckPending < c.Concurrency:
		return fmt.Errorf("EFFECTS_MAX_ACK_PENDING=%d: want at least EFFECTS_CONCURRENCY (%d)", c.MaxAckPending, c.Concurrency)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("EFFECTS_SHUTDOWN_TIMEOUT=%s: want a duration of zero or more", c.ShutdownTimeout)
	case c.CompletionDeadline <= 0:
		return fmt.Errorf("EFFECTS_COMPLETION_DEADLINE=%s: want a positive duration", c.CompletionDeadline)
	}
	if age := c.Streams.MaxAge; age > 0 {
		limit := age - retentionMargin(age)
		switch {
		case c.RetryMax > limit:
			return fmt.Errorf("EFFECTS_RETRY_MAX=%s: want at most %s, well before the stream max age (%s) removes a waiting effect", c.RetryMax, limit, age)
		case c.CompletionDeadline > limit:
			return fmt.Errorf("EFFECTS_COMPLETION_DEADLINE=%s: want at most %s, well before the stream max age (%s)", c.CompletionDeadline, limit, age)
		}
	}
	for k, n := range c.KindConcurrency {
		if n < 1 {
			return fmt.Errorf("EFFECTS_KIND_CONCURRENCY: %s=%d: want at least 1", k, n)
		}
	}
	if err := c.Streams.Validate(); err != nil {
		return errors.New("stream settings: " + err.Error())
	}
	return nil
}

// configFromEnv reads the EFFECTS_* variables listed on [Config]'s fields.
func configFromEnv(r *envconfig.Reader, streams effects.StreamOptions) (Config, error) {
	// An explicit 0 in the environment is checked like any other value,
	// not taken for "default" as a zero field of Config is.
	def := Config{}.WithDefaults()
	c := Config{
		Concurrency:        r.Int("EFFECTS_CONCURRENCY", def.Concurrency),
		HandlerTimeout:     r.Duration("EFFECTS_HANDLER_TIMEOUT", def.HandlerTimeout),
		MaxAttempts:        r.Int("EFFECTS_MAX_ATTEMPTS", def.MaxAttempts),
		RetryBase:          r.Duration("EFFECTS_RETRY_BASE", def.RetryBase),
		RetryMax:           r.Duration("EFFECTS_RETRY_MAX", def.RetryMax),
		AckWait:            r.Duration("EFFECTS_ACK_WAIT", 0),
		MaxAckPending:      r.Int("EFFECTS_MAX_ACK_PENDING", def.MaxAckPending),
		ShutdownTimeout:    settings.ShutdownTimeout(r),
		CompletionDeadline: r.Duration("EFFECTS_COMPLETION_DEADLINE", def.CompletionDeadline),
		Streams:            streams.WithDefaults(),
	}
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	var err error
	if c.KindConcurrency, err = ParseKindConcurrency(r.String("EFFECTS_KIND_CONCURRENCY", "")); err != nil {
		return Config{}, fmt.Errorf("EFFECTS_KIND_CONCURRENCY: %w", err)
	}
	if c.KindRate, err = ParseKindRate(r.String("EFFECTS_KIND_RATE", "")); err != nil {
		return Config{}, fmt.Errorf("EFFECTS_KIND_RATE: %w", err)
	}
	return c, c.Validate()
}

// ParseKindConcurrency reads "kind=n,kind=n".
func ParseKindConcurrency(s string) (map[string]int, error) {
	out := map[string]int{}
	err := parseKindList(s, func(kind, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("%s=%q: want a whole number of at least 1", kind, v)
		}
		out[kind] = n
		return nil
	})
	return out, err
}

// ParseKindRate reads "kind=n/unit,..." with unit s, m or h ("10/s",
// "600/m").
func ParseKindRate(s string) (map[string]effects.Rate, error) {
	out := map[string]effects.Rate{}
	err := parseKindList(s, func(kind, v string) error {
		r, err := ParseRate(v)
		if err != nil {
			return fmt.Errorf("%s=%q: %w", kind, v, err)
		}
		out[kind] = r
		return nil
	})
	return out, err
}

// ParseRate reads "n/s", "n/m" or "n/h".
func ParseRate(v string) (effects.Rate, error) {
	num, unit, ok := strings.Cut(v, "/")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n < 1 {
		return effects.Rate{}, errors.New("want <count>/<unit>, a count of at least 1 and a unit of s, m or h (10/s, 600/m)")
	}
	per := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	if per == 0 {
		return effects.Rate{}, fmt.Errorf("unit %q: want s, m or h", unit)
	}
	r := effects.Rate{N: n, Per: per}
	if r.Interval() <= 0 {
		// The limiter spaces attempts by the interval; none would be no
		// limit at all.
		return effects.Rate{}, fmt.Errorf("%d/%s is too fast: at most one attempt per nanosecond", n, unit)
	}
	return r, nil
}

func parseKindList(s string, each func(kind, v string) error) error {
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		kind, v, ok := strings.Cut(item, "=")
		kind, v = strings.TrimSpace(kind), strings.TrimSpace(v)
		if !ok {
			return fmt.Errorf("%q: want kind=value", item)
		}
		if err := effects.ValidateKind(kind); err != nil {
			return fmt.Errorf("%q: %w", item, err)
		}
		if seen[kind] {
			return fmt.Errorf("kind %q is listed twice", kind)
		}
		seen[kind] = true
		if err := each(kind, v); err != nil {
			return err
		}
	}
	return nil
}

// kindLimits are one kind's effective limits: the environment's per-kind
// settings over the registration's options over the Config's defaults.
type kindLimits struct {
	concurrency        int
	rate               effects.Rate
	timeout            time.Duration
	maxAttempts        int
	maxRetryDelay      time.Duration
	completionDeadline time.Duration
	ackWait            time.Duration
}

func (c Config) limitsFor(kind string, o effects.KindOptions) (kindLimits, error) {
	pick := func(v, def time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return def
	}
	l := kindLimits{
		concurrency:        c.Concurrency,
		rate:               o.Rate,
		timeout:            pick(o.AttemptTimeout, c.HandlerTimeout),
		maxAttempts:        c.MaxAttempts,
		maxRetryDelay:      pick(o.MaxRetryDelay, c.RetryMax),
		completionDeadline: pick(o.CompletionDeadline, c.CompletionDeadline),
	}
	if o.Concurrency > 0 {
		l.concurrency = o.Concurrency
	}
	if o.MaxAttempts > 0 {
		l.maxAttempts = o.MaxAttempts
	}
	if n, ok := c.KindConcurrency[kind]; ok {
		l.concurrency = n
	}
	if r, ok := c.KindRate[kind]; ok {
		l.rate = r
	}
	l.ackWait = c.AckWait
	if l.ackWait == 0 {
		l.ackWait = l.timeout + 30*time.Second
	}
	if l.ackWait < l.timeout+AckWaitMargin {
		return l, fmt.Errorf("kind %s: EFFECTS_ACK_WAIT=%s: want at least its attempt timeout (%s) + %s", kind, l.ackWait, l.timeout, AckWaitMargin)
	}
	if age := c.Streams.MaxAge; age > 0 {
		limit := age - retentionMargin(age)
		if l.maxRetryDelay > limit || l.completionDeadline > limit {
			return l, fmt.Errorf("kind %s: max retry delay %s and completion deadline %s must be at most %s, well before the stream max age (%s)",
				kind, l.maxRetryDelay, l.completionDeadline, limit, age)
		}
	}
	if l.maxRetryDelay < c.RetryBase {
		return l, fmt.Errorf("kind %s: max retry delay %s is below EFFECTS_RETRY_BASE (%s)", kind, l.maxRetryDelay, c.RetryBase)
	}
	if c.MaxAckPending < l.concurrency {
		return l, fmt.Errorf("kind %s: EFFECTS_MAX_ACK_PENDING=%d: want at least the kind's concurrency (%d)", kind, c.MaxAckPending, l.concurrency)
	}
	return l, nil
}
