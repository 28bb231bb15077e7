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
	backoff := max(p.Min, time.Millisecond)
	for n := 1; ; n++ {
		err := attempt(ctx)
		if err == nil {
			return n, true
		}
		if ctx.Err() != nil {
			return n, false
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if failed != nil {
			failed(err, n, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return n, false
		case <-t.C:
		}
		backoff = min(2*backoff, max(p.Max, p.Min))
	}
}
