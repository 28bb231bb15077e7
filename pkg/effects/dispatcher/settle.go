package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/effects-run/effects/internal/jspub"
	"github.com/effects-run/effects/internal/keepalive"
	"github.com/effects-run/effects/pkg/effects"
)

// A delivery's way from its worker to JetStream, in order:
//
//	finish  claims the delivery (running → deciding) and asks decide
//	carry   publishes the outcome's completion, if any; a failed publish is
//	        decided again (result.unpublished)
//	settle  the one place that tells JetStream: Ack, Nak, NakWithDelay,
//	        Term, or nothing (leave: redelivered after the ack wait); or
//	        holds an async delivery (async.go) until its completion,
//	        deadline or release, each of which claims it back
//	        (held → deciding) and comes through carry and settle again.
//
// Every path that ends a delivery — its worker, the attempt's watchdog, an async
// completion (Done, or anyone's), the completion deadline, a shutdown's
// release, an operator's cancel of a held effect (control.go), a message
// given back unstarted (at a shutdown, or a pause) — claims it with a
// compare-and-set on its one state, so exactly one of them settles it, once.

// Delivery states. Only claim (and hold, completed) change them, by
// compare-and-set.
const (
	// running: the worker has it (decode, limits, the handler).
	running int32 = iota
	// runningCompleted: running, and the async handler's Done already
	// published the completion.
	runningCompleted
	// deciding: claimed; its outcome is being carried out.
	deciding
	// decidingCompleted: deciding, and the async completion arrived
	// meanwhile: the hold about to begin is not needed.
	decidingCompleted
	// held: an async effect waiting for its completion, kept alive.
	held
	// settled: acked, nak'ed, termed or left; nothing more happens to it.
	settled
)

// delivery is one message being handled.
type delivery struct {
	msg     jetstream.Msg
	effect  effects.Effect
	attempt int
	stored  time.Time // when the stream stored the effect

	state atomic.Int32
	// keep is its place in the executor's keep-alive while it is out
	// (rate-limit wait, attempt, completion on its way, async hold); settle
	// takes it out.
	keep keepalive.Member
	// watch is its place in the executor's watchdog while the handler
	// runs; overran is made when the watchdog gives the attempt up, and
	// closed once that is carried out.
	watch   keepalive.Member
	overran chan struct{}
	// att is the attempt the handler is given.
	att Attempt

	// heldAt and deadline (the async completion deadline's timer) are
	// set under the executor's mu when the hold begins.
	heldAt   time.Time
	deadline *time.Timer

	// trace is the attempt's span context: the completion message carries
	// it so that the completer's write joins the effect's trace.
	trace trace.SpanContext

	// x and o, while the completion is on its way (the settler): the
	// delivery is the jspub.Waiter of its completion's PubAck.
	x *executor
	o outcome
	// run registers the running attempt for an operator's cancel
	// (control.go).
	run runEntry
}

// claim takes the delivery from state from: the caller alone carries out
// its outcome now.
func (dl *delivery) claim(from int32) bool { return dl.state.CompareAndSwap(from, deciding) }

// finish decides the outcome of a running delivery and carries it out,
// unless another path (the worker, the attempt's watchdog) claimed it first.
func (x *executor) finish(dl *delivery, r result, stopping bool) {
	completed := false
	switch {
	case dl.claim(running):
	case dl.claim(runningCompleted):
		completed = true
	default:
		return
	}
	in := x.info(dl, stopping)
	in.completed = completed
	x.carry(dl, decide(in, r))
}

// giveBack hands a message whose attempt never started back to the stream
// at once: one fetched as a shutdown began, or one the kind's consumer had
// pulled ahead when it was stopped or the kind paused (consume.Reader's
// Release and Pause).
func (x *executor) giveBack(jm jetstream.Msg) {
	dl := &delivery{msg: jm}
	dl.claim(running) // nobody else knows it
	x.settle(dl, decide(x.info(dl, true), result{givenBack: true}))
}

func (x *executor) info(dl *delivery, stopping bool) attemptInfo {
	in := attemptInfo{
		effect: dl.effect, attempt: dl.attempt, maxAttempts: x.lim.maxAttempts,
		stopping: stopping, now: time.Now(), retryBase: x.d.cfg.RetryBase,
		maxDelay: x.lim.maxRetryDelay, maxPayload: x.d.maxPayload(),
		gaveUp: x.d.giveUpCtx.Err() != nil,
	}
	if x.d.maxAge > 0 && !dl.stored.IsZero() {
		in.retryBy = dl.stored.Add(x.d.maxAge - retentionMargin(x.d.maxAge))
	}
	return in
}

// retentionMargin is how long before the stream's MaxAge the last retry
// must be due: a tenth of it, at least a minute (never more than half).
func retentionMargin(maxAge time.Duration) time.Duration {
	return min(max(maxAge/10, time.Minute), maxAge/2)
}

// carry carries out a claimed delivery's outcome: its completion first,
// then settle. A completion that ends the delivery (ack or term) is
// published asynchronously and the delivery handed to the settler, which
// settles it once JetStream acknowledged the completion; the worker goes
// on meanwhile.
func (x *executor) carry(dl *delivery, o outcome) {
	if o.completion == nil || x.d.opts.noCompletions {
		x.settle(dl, o)
		return
	}
	injectTrace(dl, o.completion)
	if (o.action == ack || o.action == term) && x.d.settler != nil && x.d.settler.publish(x, dl, o) {
		return
	}
	// Stopping, or no publisher: the synchronous way, until the shutdown's
	// deadline at the latest.
	x.publishAndSettle(x.d.giveUpCtx, dl, o)
}

// publishAndSettle publishes the outcome's completion, waiting for its ack
// and retrying briefly, then settles the delivery; a completion that could
// not be stored is decided again (the effect is delivered again). ctx
// ending stops the retries.
func (x *executor) publishAndSettle(ctx context.Context, dl *delivery, o outcome) {
	if err := x.d.publishWithin(ctx, o.completion); err != nil {
		x.km.publishErrors.Inc()
		x.logger.Error("completion not published; the effect will be redelivered", "effect_id", dl.effect.ID, "kind", x.kind, "error", err)
		x.settle(dl, decide(x.info(dl, false), result{unpublished: err}))
		return
	}
	x.settle(dl, o)
}

// settle tells JetStream a claimed delivery's outcome, once its completion
// (if any) is stored, and counts and logs it. It is the only place that
// acks, naks or terms a delivery, holds it for its async completion, or
// leaves it to JetStream's redelivery.
func (x *executor) settle(dl *delivery, o outcome) {
	if o.action == hold {
		x.count(dl, o)
		if !x.hold(dl) {
			// Completed while the hold began: done.
			in := x.info(dl, false)
			in.completed, in.held = true, true
			x.settle(dl, decide(in, result{}))
		}
		return
	}
	dl.state.Store(settled)
	x.keep.Leave(&dl.keep)
	switch o.action {
	case ack:
		x.report(dl, dl.msg.Ack())
	case nak:
		if o.delay > 0 {
			x.report(dl, dl.msg.NakWithDelay(o.delay))
		} else {
			x.report(dl, dl.msg.Nak())
		}
	case term:
		// Plain Term: nats-server before 2.10 ignores "+TERM <reason>"
		// and would redeliver. The reason is in the completion.
		x.report(dl, dl.msg.Term())
	case leave:
	}
	x.count(dl, o)
}

// count counts and logs an outcome.
func (x *executor) count(dl *delivery, o outcome) {
	if o.verdict == noVerdict {
		return
	}
	x.km.handled[o.verdict].Inc()
	switch o.verdict {
	case failed:
		x.logger.Warn("effect failed", "effect_id", dl.effect.ID, "kind", x.kind, "attempts", dl.attempt, "error", errorText(o.err))
	case retried:
		x.logger.Debug("effect retried", "effect_id", dl.effect.ID, "kind", x.kind, "attempt", dl.attempt, "delay", o.delay, "error", errorText(o.err))
	case malformed:
		x.logger.Warn("malformed effect message", "subject", dl.msg.Subject(), "event_id", dl.effect.EventID, "error", o.err)
	case cancelled:
		x.logger.Info("effect cancelled by an operator; acked, nothing recorded", "effect_id", dl.effect.ID, "kind", x.kind, "attempt", dl.attempt)
	}
	if p, ok := errors.AsType[*PanicError](o.err); ok {
		x.logger.Error("handler panicked", "effect_id", dl.effect.ID, "kind", x.kind, "panic", fmt.Sprint(p.Value), "stack", string(p.Stack))
	}
}

func (x *executor) report(dl *delivery, err error) {
	if err != nil {
		// JetStream redelivers after the ack wait; completions dedupe.
		x.logger.Warn("jetstream settle", "subject", dl.msg.Subject(), "error", err)
	}
}

// settler acks (or terms) effects whose completion was published
// asynchronously, once JetStream acknowledged the completion. A worker that
// published a completion hands the rest of the delivery over and takes the
// next message instead of waiting for the PubAck round trip.
//
// The completions go out through jspub (the dispatcher's completion
// publisher): its one batch in flight sends the completions of many workers
// together, and the delivery itself is told its PubAck (delivery.Published,
// on the connection's delivery goroutine), which settles it there. Nothing
// is made per completion but the message: no future, channel or timer, and
// no goroutine hand-over. A sweep every second expires the completions not
// acknowledged within publishTimeout.
//
// The order is unchanged: an effect is acked only after its completion's
// PubAck. A PubAck that reports an error, or none within publishTimeout,
// sends the completion again the synchronous way (publish, with its
// retries) in a goroutine of its own, and the delivery is settled as before:
// ack after the completion is stored, or decided again as unpublished.
type settler struct {
	// ctx ends when a stop gives up waiting: what is still unsettled is
	// left to JetStream's redelivery after the ack wait.
	ctx     context.Context
	cancel  context.CancelFunc
	mu      sync.RWMutex // held for reading while publishing, so stop cannot begin meanwhile
	closed  bool
	pending sync.WaitGroup // handed over and not settled yet

	sweepOnce sync.Once
	pub       completionPublisher // the one the sweep expires, once it runs
	sweeping  chan struct{}       // closed to end the sweep
	swept     chan struct{}       // closed when the sweep ended
}

// completionPublisher publishes completions and tells each delivery its
// PubAck: jspub.Publisher, or a test's stand-in.
type completionPublisher interface {
	Publish(msg *nats.Msg, w jspub.Waiter) (uint64, error)
	Expire(before time.Time, err error) int
	Abandon(err error) int
	Close()
}

// newCompletionPublisher is the completion publisher on js's connection;
// nil without one (then completions are published the synchronous way).
func newCompletionPublisher(js jetstream.JetStream) completionPublisher {
	if js == nil {
		return nil // a Dispatcher that is never run (tests of New)
	}
	if nc := js.Conn(); nc != nil {
		return jspub.New(nc, jspub.Options{})
	}
	return nil
}

// sweepEvery is how often the settler expires the completions whose
// PubAck did not come within publishTimeout.
const sweepEvery = time.Second

// errNoPubAck: JetStream did not acknowledge a completion in time.
var errNoPubAck = errors.New("no PubAck within the publish timeout")

// errStopGaveUp: the stop's deadline passed with the completion's PubAck
// still outstanding.
var errStopGaveUp = errors.New("no PubAck by the shutdown deadline")

func newSettler() *settler {
	ctx, cancel := context.WithCancel(context.Background())
	return &settler{ctx: ctx, cancel: cancel, sweeping: make(chan struct{}), swept: make(chan struct{})}
}

// publish publishes dl's completion and hands the delivery over until its
// PubAck; false when the settler was stopped or there is no publisher (the
// caller then publishes the synchronous way).
func (s *settler) publish(x *executor, dl *delivery, o outcome) bool {
	pub := x.d.pub
	if pub == nil {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	s.sweepOnce.Do(func() {
		s.pub = pub
		go s.sweep(pub)
	})
	s.pending.Add(1)
	dl.x, dl.o = x, o
	if _, err := pub.Publish(o.completion, dl); err != nil {
		s.pending.Done()
		return false
	}
	return true
}

// Published is the PubAck of a delivery's completion (jspub.Waiter): the
// delivery is settled, or its completion published again.
func (dl *delivery) Published(_ jspub.Ack, err error) {
	x, o := dl.x, dl.o
	s := x.d.settler
	switch {
	case err == nil:
		x.settle(dl, o)
		s.pending.Done()
	case errors.Is(err, errStopGaveUp):
		// The stop's deadline: decided as unpublished, which leaves it
		// to the redelivery after the ack wait.
		in := x.info(dl, true)
		in.gaveUp = true
		x.settle(dl, decide(in, result{unpublished: errNoPubAck}))
		s.pending.Done()
	default:
		s.retry(x, dl, o, err)
	}
}

// sweep expires, every sweepEvery, the completions not acknowledged within
// publishTimeout, until the settler stops.
func (s *settler) sweep(pub completionPublisher) {
	defer close(s.swept)
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			pub.Expire(time.Now().Add(-publishTimeout), errNoPubAck)
		case <-s.sweeping:
			return
		}
	}
}

// retry publishes the completion again, waiting and retrying as a worker
// would, in a goroutine of its own.
func (s *settler) retry(x *executor, dl *delivery, o outcome, err error) {
	x.logger.Debug("completion publish not acknowledged; publishing again", "effect_id", dl.effect.ID, "kind", x.kind, "error", err)
	go func() {
		defer s.pending.Done()
		x.publishAndSettle(s.ctx, dl, o)
	}()
}

// stop waits until ctx ends for the deliveries handed over to be settled,
// then stops the settler. Later hand-overs are refused. It reports whether
// all were settled.
func (s *settler) stop(ctx context.Context) bool {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.sweepOnce.Do(func() { close(s.swept) }) // never started
	defer func() {
		s.cancel()
		close(s.sweeping)
		<-s.swept
		if s.pub != nil {
			s.pub.Close()
		}
	}()
	settled := make(chan struct{})
	go func() { s.pending.Wait(); close(settled) }()
	select {
	case <-settled:
		return true
	case <-ctx.Done():
		s.cancel() // the retries
		if s.pub != nil {
			s.pub.Abandon(errStopGaveUp)
		}
		<-settled
		return false
	}
}
