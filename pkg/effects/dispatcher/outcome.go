package dispatcher

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

// verdict is what becomes of one attempt.
type verdict string

const (
	succeeded   verdict = "succeeded"   // completion published, message acked
	deferred    verdict = "deferred"    // async handler started; completion comes later
	retried     verdict = "retried"     // nak with a delay
	failed      verdict = "failed"      // failed completion published, message terminated
	interrupted verdict = "interrupted" // shutdown cut the attempt short: back to the stream at once
)

// outcome is the decision for one attempt.
type outcome struct {
	verdict verdict
	delay   time.Duration // for retried
	err     error         // for failed and retried: the handler's error
}

// errShutdown is the cause of a handler context cancelled by a shutdown
// whose grace period ran out.
var errShutdown = errors.New("dispatcher shutting down")

// decide maps an attempt's result to what happens next. It is the one place
// that does: everything downstream only carries the decision out.
func (d *Dispatcher) decide(attempt int, isDeferred bool, err error, stopping bool) outcome {
	switch {
	case err == nil && isDeferred:
		return outcome{verdict: deferred}
	case err == nil:
		return outcome{verdict: succeeded}
	case effects.IsPermanent(err):
		return outcome{verdict: failed, err: err}
	case stopping:
		// Not a failed attempt: the work goes back to the stream for this
		// or another dispatcher to pick up.
		return outcome{verdict: interrupted, err: err}
	case attempt >= d.cfg.MaxAttempts:
		return outcome{verdict: failed, err: err}
	}
	if delay, ok := effects.RetryDelay(err); ok {
		return outcome{verdict: retried, delay: delay, err: err}
	}
	return outcome{verdict: retried, delay: d.backoff(attempt), err: err}
}

// backoff is the delay after failed attempt n (from 1): RetryBase doubled per
// attempt, capped at RetryMax, with "equal jitter": a random point in the
// upper half, so retries of effects that failed together spread out but
// never come back sooner than half the nominal delay.
func (d *Dispatcher) backoff(attempt int) time.Duration {
	delay := d.cfg.RetryMax
	if shift := attempt - 1; shift < 40 {
		if b := d.cfg.RetryBase << shift; b > 0 && b < delay {
			delay = b
		}
	}
	half := delay / 2
	return half + rand.N(delay-half+1)
}
