// Package retry is the one loop the services use to wait for a dependency at
// start (NATS streams and consumers): try, and on failure wait with
// exponential backoff and jitter, until it works or the context ends.
package retry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is the backoff: Min before the second try, doubling to Max.
type Policy struct {
	Min, Max time.Duration
}

// Until calls attempt until it returns nil or ctx ends. After each failure it
// calls failed with the error, the number of the attempt (from 1) and the
// wait before the next one, then waits a random time in the upper half of the
// current backoff, so services restarted together do not retry together.
// It returns the number of attempts and whether the last one succeeded.
func Until(ctx context.Context, p Policy, attempt func(context.Context) error, failed func(err error, n int, wait time.Duration)) (int, bool) {
	b := p.Backoff()
	for n := 1; ; n++ {
		err := attempt(ctx)
		if err == nil {
			return n, true
		}
		if ctx.Err() != nil {
			return n, false
		}
		wait := b.Next()
		if failed != nil {
			failed(err, n, wait)
		}
		if !Sleep(ctx, wait) {
			return n, false
		}
	}
}

// Backoff is the policy's state across failures, for a loop that runs on
// after a success (Until starts afresh each time): Next after each failure,
// Reset after a success.
type Backoff struct {
	p   Policy
	cur time.Duration // the current backoff; 0 before the first failure
}

// Backoff returns the policy's state before any failure.
func (p Policy) Backoff() *Backoff { return &Backoff{p: p} }

// Next returns the wait after one more failure: a random time in the upper
// half of the current backoff, which starts at Min and doubles to Max.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = max(b.p.Min, time.Millisecond)
	} else {
		b.cur = min(2*b.cur, max(b.p.Max, b.p.Min))
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

// Reset starts the backoff again from Min.
func (b *Backoff) Reset() { b.cur = 0 }

// Sleep waits d, or until ctx ends; it reports whether the whole wait passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
