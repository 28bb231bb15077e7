package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

// Handler runs one attempt of an effect. It is what middleware wraps: the
// registered handler, adapted, is the innermost one.
type Handler func(ctx context.Context, a *Attempt) Result

// Attempt is one run of a handler on one effect.
type Attempt struct {
	Effect effects.Effect
	// Done completes the effect later (async handlers).
	Done effects.Done
}

// Result is what an attempt produced: a value (sync handler), Deferred (an
// async handler started its work), or an error.
type Result struct {
	Value    any
	Deferred bool
	Err      error
}

// Middleware wraps a Handler with a cross-cutting concern. Middleware are
// plain functions: compose them by calling one on another's result.
type Middleware func(Handler) Handler

// Chain wraps h in mws, the first outermost.
func Chain(h Handler, mws ...Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// PanicError is the error of an attempt whose handler panicked.
type PanicError struct {
	Value any
	Stack []byte
}

func (p *PanicError) Error() string { return fmt.Sprintf("panic: %v", p.Value) }

// Recover turns a panic in the handler into a [PanicError] result.
func Recover(next Handler) Handler {
	return func(ctx context.Context, a *Attempt) (r Result) {
		defer func() {
			if v := recover(); v != nil {
				r = Result{Err: &PanicError{Value: v, Stack: debug.Stack()}}
			}
		}()
		return next(ctx, a)
	}
}

// Timeout ends the attempt's context after d and makes a deadline error
// say which limit was hit. (A handler that ignores its context is given up
// by the executor, which alone can settle the message without it.)
func Timeout(d time.Duration) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, a *Attempt) Result {
			ctx, cancel := context.WithTimeoutCause(ctx, d, errAttemptTimeout)
			defer cancel()
			r := next(ctx, a)
			if r.Err != nil && errors.Is(context.Cause(ctx), errAttemptTimeout) && errors.Is(r.Err, context.DeadlineExceeded) {
				r.Err = fmt.Errorf("handler timed out after %s (attempt timeout): %w", d, r.Err)
			}
			return r
		}
	}
}

var errAttemptTimeout = fmt.Errorf("attempt timeout: %w", context.DeadlineExceeded)

// measure records an attempt's duration and the attempts running.
func measure(km *kindMetrics) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, a *Attempt) Result {
			km.inFlight.Inc()
			start := time.Now()
			r := next(ctx, a)
			km.duration.Observe(time.Since(start).Seconds())
			km.inFlight.Dec()
			return r
		}
	}
}

// call adapts a registered handler to a Handler.
func call(h *effects.Handler) Handler {
	return func(ctx context.Context, a *Attempt) Result {
		v, deferred, err := h.Call(ctx, a.Effect, a.Done)
		return Result{Value: v, Deferred: deferred, Err: err}
	}
}
