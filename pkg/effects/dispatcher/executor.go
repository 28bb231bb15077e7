package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"

	"github.com/effects-run/effects/internal/consume"
	"github.com/effects-run/effects/internal/jsondec"
	"github.com/effects-run/effects/internal/keepalive"
	"github.com/effects-run/effects/pkg/effects"
)

// executor runs one kind: it owns the kind's durable consumer, a fixed pool
// of workers pulling from it, and carries out every delivery's outcome.
//
// Read a delivery from fetch to ack in this order: worker (fetch) → handle
// (decode, limits, run the middleware chain) → finish (settle.go: claim
// the delivery, decide (decide.go: the one decision)) → carry (publish the
// completion) → settle (the one place that acks, naks, terms, holds or
// leaves a delivery). An async delivery's hold, completion, deadline and
// release are in async.go, through the same claim and settle.
type executor struct {
	d      *Dispatcher
	kind   string
	lim    kindLimits
	chain  Handler
	async  bool
	km     *kindMetrics
	logger *slog.Logger
	rate   *rateLimiter // nil: no rate limit
	ctl    *kindControl // nil: no operator controls (control.go)
	// gate, for a rate-limited kind, is held from a worker's fetch until
	// its attempt may start, so each process holds at most one message
	// waiting for the limit: the others stay in the stream for whichever
	// process gets the next slot, and work spreads over all dispatchers.
	gate sync.Mutex
	// src is the kind's consumer (internal/consume): pulled ahead by up
	// to the kind's concurrency, or one message per pull request for a
	// rate-limited kind (see drains).
	src *consume.Reader

	workers sync.WaitGroup
	// mu guards overrun, held, and the beginning and end of each hold
	// (async.go).
	// overrun holds the effects whose handler is still running after its
	// attempt was given up (it ignored its context), so that a new attempt
	// of the same effect never overlaps with it in this process.
	mu      sync.Mutex
	overrun map[string]struct{}
	// held are async effects waiting for their completion, by effect id.
	held map[string]*delivery

	// keep sends InProgress for each delivery out longer than a third of
	// the ack wait (rate-limit wait, attempt, completion on its way, async
	// hold), until settle; watch gives up the attempts whose handler is
	// still running past the attempt timeout and its grace (overran). One
	// timer each for all of the kind's deliveries (keepalive.Queue).
	keep, watch *keepalive.Queue
}

// newQueues makes the executor's keep and watch queues.
func (x *executor) newQueues() {
	x.keep = keepalive.NewQueue(x.lim.ackWait/3, func(m *keepalive.Member) bool {
		// A lost InProgress is made up by the next; one that never
		// arrives only risks a redelivery, which the pipeline makes
		// harmless.
		_ = m.Value.(jetstream.Msg).InProgress()
		return true
	})
	x.watch = keepalive.NewQueue(x.lim.timeout+interruptGrace, func(m *keepalive.Member) bool {
		dl := m.Value.(*delivery)
		dl.overran = make(chan struct{})
		go x.overran(dl, dl.overran)
		return false
	})
}

// worker pulls and handles messages until fetching stops.
func (x *executor) worker(ctx context.Context) {
	for {
		x.awaitRunnable(ctx) // a paused kind pulls nothing
		if ctx.Err() != nil && !x.mayRun() {
			// Stopping while the kind may not run (paused, or the controls
			// unknown): what the consumer still holds is not taken only to
			// be nak'ed while its pull requests may deliver it again at
			// once; Release gives it back when they are over.
			x.workers.Done()
			return
		}
		if x.rate != nil {
			x.gate.Lock() // released by handle once the attempt may start
		}
		jm, err := x.src.Next(ctx)
		if err == nil && ctx.Err() != nil && !x.drains() {
			x.giveBack(jm) // fetched as fetching stopped: back at once
			err = ctx.Err()
		}
		// A message fetched as fetching stopped is handled like the
		// ones drain takes from the stopped iterator.
		if err != nil {
			if x.rate != nil {
				x.gate.Unlock()
			}
			if !x.drain(ctx) {
				return // overran: detached from the pool
			}
			x.workers.Done()
			return
		}
		if !x.handle(ctx, jm) {
			// This worker's handler overran its attempt: it was detached
			// from the pool (overran called Done) and another took its place.
			return
		}
	}
}

// drains reports whether the kind's workers handle, after fetching
// stopped, the messages the stopped iterator still holds. Not for a
// rate-limited kind (it fetches one message at a time, nothing is held)
// nor an async one (its work would start during the shutdown, only to be
// given back with its deadline).
//
// A rate-limited kind fetches one message at a time because its workers
// wait for the limit while holding a message: messages pulled ahead would
// wait in the client's buffer, unseen and not kept alive, and come back
// after the ack wait while still buffered. Pulled one by one, every
// delivered message is in a worker's hands, kept alive. The cost, a pull
// request per message, is small beside a rate limit.
func (x *executor) drains() bool { return x.rate == nil && !x.async }

// drain handles, once fetching stopped, what the stopped iterator still
// holds, until it is empty or the shutdown timeout ends the work. Those
// messages were delivered to this process and JetStream counted the
// delivery: given back, each would come back as its next attempt without
// having run, so every deploy would use up an attempt of up to a pull
// buffer of effects (and enough deploys would fail an effect that never
// ran). Handled within the shutdown timeout they cost nothing; what is left
// when it ends is given back by giveBack. It is false when the handler
// overran and this worker was detached.
func (x *executor) drain(ctx context.Context) bool {
	if ctx.Err() == nil || !x.drains() {
		return true
	}
	<-x.src.Stopped()
	for x.d.workCtx.Err() == nil {
		jm, err := x.src.Next(context.Background()) // what it holds, then ErrStopped
		if err != nil {
			return true
		}
		if !x.handle(ctx, jm) {
			return false
		}
	}
	return true
}

// handle runs one delivery from decode to ack. It is false when the
// handler overran its attempt and this goroutine must end (a new worker
// was started in its place).
func (x *executor) handle(ctx context.Context, jm jetstream.Msg) bool {
	release := func() {} // the rate gate the worker took before fetching
	if x.rate != nil {
		var once sync.Once
		release = func() { once.Do(x.gate.Unlock) }
		defer release() // every path that ends before the attempt starts
	}
	dl := &delivery{msg: jm, attempt: 1}
	var seq uint64
	if meta, err := jm.Metadata(); err == nil {
		dl.attempt, dl.stored, seq = int(meta.NumDelivered), meta.Timestamp, meta.Sequence.Stream
	}
	dl.keep.Value = jm
	x.keep.Join(&dl.keep)
	eff, err := decodeEffect(jm.Data(), x.kind)
	eff.EventID = jm.Headers().Get(jetstream.MsgIDHeader)
	if eff.EventID == "" {
		// Published without a message id: the stream sequence still
		// names this delivery's event, for the completion's id.
		eff.EventID = strconv.FormatUint(seq, 10)
	}
	eff.Attempt = dl.attempt
	dl.effect = eff
	if err != nil {
		x.finish(dl, result{malformed: err}, false)
		return true
	}
	if dl.attempt > x.lim.maxAttempts {
		x.finish(dl, result{}, false) // decide fails it without a run
		return true
	}
	if x.isOverrunning(eff.ID) {
		x.finish(dl, result{err: errors.New("the previous attempt of this effect is still running in this process (its handler ignored its context)")}, false)
		return true
	}
	if x.rate != nil {
		err := x.rate.wait(ctx)
		release()
		if err != nil {
			// Only a shutdown ends the wait: no attempt was made.
			x.finish(dl, result{err: err}, true)
			return true
		}
	}

	// The operator controls' check: a cancelled effect is settled unrun,
	// a paused kind's attempt waits.
	attemptCtx, ok := x.admit(ctx, dl)
	if !ok {
		return true
	}

	// The attempt. Its context descends from the work context, which only
	// a shutdown past its grace period cancels (and an operator's cancel).
	// The span is the handler's run; it ends before the outcome is
	// applied, which the completion message's traceparent follows.
	workCtx, span := startAttempt(attemptCtx, jm.Headers(), x.kind, eff.ID, dl.attempt)
	// Written before the attempt joins the watchdog and before the handler can
	// call Done: every later reader comes after.
	dl.trace = span.SpanContext()
	dl.att = Attempt{Effect: eff}
	if x.async {
		dl.att.Done = x.done(dl)
	}
	dl.watch.Value = dl
	x.watch.Join(&dl.watch)
	r := x.chain(workCtx, &dl.att)
	if r.Err != nil {
		span.SetStatus(codes.Error, errorText(r.Err))
	}
	span.End()
	if !x.watch.Leave(&dl.watch) {
		<-dl.overran // the attempt was given up; its result comes too late
		x.lateResult(dl, r)
		x.endAttempt(dl)
		return false
	}
	x.finish(dl, result{value: r.Value, deferred: r.Deferred, err: r.Err, cancelled: dl.attemptCancelled()}, errors.Is(context.Cause(workCtx), errShutdown))
	x.endAttempt(dl)
	return true
}

// overran gives up an attempt whose handler is still running past its
// timeout and grace: the attempt is a timeout, a worker takes the stuck
// one's place, and the effect is marked so that no new attempt overlaps.
func (x *executor) overran(dl *delivery, done chan struct{}) {
	defer close(done)
	x.mu.Lock()
	x.overrun[dl.effect.ID] = struct{}{}
	x.mu.Unlock()
	x.km.overrunning.Inc()
	x.km.overruns.Inc()
	stopping := errors.Is(context.Cause(x.d.workCtx), errShutdown)
	x.logger.Warn("handler still running after its attempt timed out; giving the attempt up",
		"effect_id", dl.effect.ID, "kind", x.kind, "attempt", dl.attempt, "timeout", x.lim.timeout)
	err := fmt.Errorf("handler timed out after %s (attempt timeout) and did not return within %s of its context ending", x.lim.timeout, interruptGrace)
	x.finish(dl, result{err: err}, stopping)
	// Detach the stuck worker from the pool and put another in its place.
	if x.d.fetching() {
		x.workers.Add(1)
		go x.worker(x.d.fetchCtx)
	}
	x.workers.Done()
}

// lateResult records the end of an overrunning handler; its result is
// discarded.
func (x *executor) lateResult(dl *delivery, r Result) {
	x.mu.Lock()
	delete(x.overrun, dl.effect.ID)
	x.mu.Unlock()
	x.km.overrunning.Dec()
	x.logger.Warn("overrunning handler returned; its result is discarded",
		"effect_id", dl.effect.ID, "kind", x.kind, "attempt", dl.attempt, "error", errorText(r.Err))
}

func (x *executor) isOverrunning(id string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	_, ok := x.overrun[id]
	return ok
}

// decodeEffect reads an effect message; on error it keeps what it could
// read, so that the row can still be failed.
func decodeEffect(data []byte, kind string) (effects.Effect, error) {
	var e effects.Effect
	if !jsondec.Valid(data) || !decodeEffectFast(data, kind, &e) {
		var err error
		if e, err = unmarshalEffect(data); err != nil {
			return decodeError(data, kind, err)
		}
	}
	return checkEffect(e, kind)
}

// unmarshalEffect decodes data with encoding/json, into an Effect of its
// own: one whose address reaches json.Unmarshal is on the heap, and
// decodeEffect's is not.
func unmarshalEffect(data []byte) (effects.Effect, error) {
	var e effects.Effect
	err := json.Unmarshal(data, &e)
	return e, err
}

// checkEffect is decodeEffect's verdict on a decoded body.
func checkEffect(e effects.Effect, kind string) (effects.Effect, error) {
	// A refused effect is failed as the subject's kind too: the body's kind
	// is not a kind this consumer owns, and may not be a valid kind.
	bodyKind := e.Kind
	e.Kind = kind
	switch {
	case !effects.IsUUID(e.ID):
		return e, fmt.Errorf("id %.80q is not a UUID", e.ID)
	case bodyKind != "" && bodyKind != kind:
		return e, fmt.Errorf("kind %.80q does not match the subject's kind %q", bodyKind, kind)
	}
	if len(e.Payload) == 0 {
		e.Payload = json.RawMessage("{}")
	}
	return e, nil
}

// decodeError is decodeEffect's result for a body encoding/json refuses:
// the id, if it can be read, and the gist of the error.
func decodeError(data []byte, kind string, err error) (effects.Effect, error) {
	var partial struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(data, &partial)
	// encoding/json's errors quote the value they refuse (a time, for
	// one) whole; the row's error needs the gist.
	return effects.Effect{ID: partial.ID, Kind: kind}, errors.New(cutText(err.Error(), maxDecodeErrorText))
}

// maxDecodeErrorText bounds the reason a malformed effect message is failed
// with.
const maxDecodeErrorText = 256

// cutText cuts s to at most n bytes without splitting a character, marking
// the cut.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "… (truncated)"
}
