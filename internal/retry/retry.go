// Package retry is the one backoff of the services: whatever waits for a
// dependency (NATS streams and consumers at start, PostgreSQL while a batch
// cannot be written, the rate-limit bucket, a completion's publish) tries,
// and after a failure waits with exponential backoff and jitter. [Until] and
// [Do] are the loop; [Backoff] is its waits one at a time, for a loop that
// does more between tries than wait (a table source that also wakes on
// notifications); [Policy.Delay] is the same formula for a delay that is
// not waited here (a redelivery scheduled with a nak).
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// Policy is the backoff: Min before the second try, doubling to Max.
type Policy struct {
	Min, Max time.Duration
}

// Delay is the wait after failure n (from 1): Min doubled n-1 times, capped
// at Max, then "equal jitter", a random point in the upper half. Jitter so
// that what failed together (services restarted at once, effects failed by
// one outage) does not come back together; the upper half so that it never
// comes back sooner than half the nominal delay. A Min below a millisecond
// counts as one, a Max below Min as Min.
func (p Policy) Delay(n int) time.Duration {
	lo := max(p.Min, time.Millisecond)
	hi := max(p.Max, lo)
	d := hi
	if shift := n - 1; shift < 40 {
		if b := lo << max(shift, 0); b > 0 && b < hi {
			d = b
		}
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// Backoff hands out a Policy's waits in turn. The zero value is not usable:
// make one with [Policy.Backoff].
type Backoff struct {
	p Policy
	n int
}

// Backoff returns the policy's waits, starting with the first.
func (p Policy) Backoff() Backoff { return Backoff{p: p} }

// Next is the wait after one more failure.
func (b *Backoff) Next() time.Duration {
	b.n++
	return b.p.Delay(b.n)
}

// Reset starts again from the first wait (after a success).
func (b *Backoff) Reset() { b.n = 0 }

// Failures is the number of waits handed out since the last Reset.
func (b *Backoff) Failures() int { return b.n }

// Sleep waits d, or until ctx ends: then it returns context.Cause(ctx).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// stopError marks an error that trying again cannot fix.
type stopError struct{ err error }

func (e stopError) Error() string { return e.err.Error() }
func (e stopError) Unwrap() error { return e.err }

// Stop marks err as one that trying again cannot fix: [Do] returns it at
// once (unwrapped); [Until] retries it like any other. Stop(nil) is nil.
func Stop(err error) error {
	if err == nil {
		return nil
	}
	return stopError{err}
}

// Do calls attempt until it returns nil, an error marked with [Stop], or
// ctx ends. After each other failure it calls failed (if not nil) with the
// error, the number of the attempt (from 1) and the wait before the next
// one, then waits. It returns nil, the stopping error (unmarked), or, when
// ctx ended, the last attempt's error.
func Do(ctx context.Context, p Policy, attempt func(context.Context) error, failed func(err error, n int, wait time.Duration)) error {
	_, err := loop(ctx, p, true, attempt, failed)
	return err
}

// Until calls attempt until it returns nil or ctx ends, as [Do] does (an
// error marked with [Stop] is retried like any other). It returns the
// number of attempts and whether the last one succeeded.
func Until(ctx context.Context, p Policy, attempt func(context.Context) error, failed func(err error, n int, wait time.Duration)) (int, bool) {
	n, err := loop(ctx, p, false, attempt, failed)
	return n, err == nil
}

func loop(ctx context.Context, p Policy, stoppable bool, attempt func(context.Context) error, failed func(err error, n int, wait time.Duration)) (int, error) {
	b := p.Backoff()
	for n := 1; ; n++ {
		err := attempt(ctx)
		if err == nil {
			return n, nil
		}
		var s stopError
		if stoppable && errors.As(err, &s) {
			return n, s.err
		}
		if ctx.Err() != nil {
			return n, err
		}
		wait := b.Next()
		if failed != nil {
			failed(err, n, wait)
		}
		if Sleep(ctx, wait) != nil {
			return n, err
		}
	}
}
