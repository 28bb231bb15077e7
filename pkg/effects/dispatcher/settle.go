package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

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
// Every path that ends a delivery — its worker, the overrun timer, an async
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
	// keep sends InProgress while the delivery is out (rate-limit wait,
	// attempt, completion on its way, async hold); settle stops it.
	keep keepalive.KeepAlive

	// heldAt and deadline (the async completion deadline's timer) are
	// set under the executor's mu when the hold begins.
	heldAt   time.Time
	deadline *time.Timer

	// trace is the attempt's span context: the completion message carries
	// it so that the completer's write joins the effect's trace.
	trace trace.SpanContext
	// run registers the running attempt for an operator's cancel
	// (control.go).
	run runEntry
}

// claim takes the delivery from state from: the caller alone carries out
// its outcome now.
func (dl *delivery) claim(from int32) bool { return dl.state.CompareAndSwap(from, deciding) }

// finish decides the outcome of a running delivery and carries it out,
// unless another path (the worker, the overrun timer) claimed it first.
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
	if (o.action == ack || o.action == term) && x.d.settler != nil {
		if fut, err := x.d.pubJS.PublishMsgAsync(o.completion); err == nil {
			if x.d.settler.add(pendingSettle{x: x, dl: dl, o: o, fut: fut, since: time.Now()}) {
				return
			}
			// Stopping: wait for this PubAck here, until the shutdown's
			// deadline at the latest.
			if x.d.awaitPubAck(fut) {
				x.settle(dl, o)
				return
			}
		}
		// Refused at once (too large, the window full, not connected) or
		// not acknowledged: the synchronous way.
	}
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
	dl.keep.Stop()
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
	var p *PanicError
	if errors.As(o.err, &p) {
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
// published a completion hands the rest of the delivery to it and takes the
// next message instead of waiting for the PubAck round trip; under load the
// settler finds most PubAcks already arrived and settles them in a row.
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
	mu      sync.RWMutex // held for reading while handing over, so stop cannot close ch meanwhile
	closed  bool
	ch      chan pendingSettle
	pending sync.WaitGroup // handed over and not settled yet
	done    chan struct{}
}

// pendingSettle is a delivery whose completion is on its way.
type pendingSettle struct {
	x     *executor
	dl    *delivery
	o     outcome
	fut   jetstream.PubAckFuture
	since time.Time
}

// settlerQueue bounds the deliveries waiting for their PubAck in the
// settler's queue; beyond it workers wait to hand over (the connection's
// async-publish window bounds the publishes themselves).
const settlerQueue = 4096

// errNoPubAck: JetStream did not acknowledge a completion in time.
var errNoPubAck = errors.New("no PubAck within the publish timeout")

func newSettler() *settler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &settler{ctx: ctx, cancel: cancel, ch: make(chan pendingSettle, settlerQueue), done: make(chan struct{})}
	go s.run()
	return s
}

// add hands p over; false when the settler was stopped (the caller then
// waits for the PubAck itself).
func (s *settler) add(p pendingSettle) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	s.pending.Add(1)
	s.ch <- p // the settler keeps draining, so a full queue only waits
	return true
}

func (s *settler) run() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for p := range s.ch {
		s.settle(p, timer)
	}
}

func (s *settler) settle(p pendingSettle, timer *time.Timer) {
	// Most PubAcks have arrived by the time their turn comes.
	select {
	case <-p.fut.Ok():
		p.x.settle(p.dl, p.o)
		s.pending.Done()
		return
	case err := <-p.fut.Err():
		s.retry(p, err)
		return
	default:
	}
	timer.Reset(max(time.Until(p.since.Add(publishTimeout)), 0))
	defer timer.Stop()
	select {
	case <-p.fut.Ok():
		p.x.settle(p.dl, p.o)
		s.pending.Done()
	case err := <-p.fut.Err():
		s.retry(p, err)
	case <-timer.C:
		s.retry(p, errNoPubAck)
	case <-s.ctx.Done():
		// The stop's deadline: decided as unpublished, which leaves it
		// to the redelivery after the ack wait.
		in := p.x.info(p.dl, true)
		in.gaveUp = true
		p.x.settle(p.dl, decide(in, result{unpublished: errNoPubAck}))
		s.pending.Done()
	}
}

// retry publishes the completion again, waiting and retrying as a worker
// would, off the settler's goroutine.
func (s *settler) retry(p pendingSettle, err error) {
	p.x.logger.Debug("completion publish not acknowledged; publishing again", "effect_id", p.dl.effect.ID, "kind", p.x.kind, "error", err)
	go func() {
		defer s.pending.Done()
		p.x.publishAndSettle(s.ctx, p.dl, p.o)
	}()
}

// stop waits until ctx ends for the deliveries handed over to be settled,
// then stops the settler. Later hand-overs are refused. It reports whether
// all were settled.
func (s *settler) stop(ctx context.Context) bool {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.ch)
	}
	s.mu.Unlock()
	defer func() { <-s.done; s.cancel() }()
	settled := make(chan struct{})
	go func() { s.pending.Wait(); close(settled) }()
	select {
	case <-settled:
		return true
	case <-ctx.Done():
		s.cancel()
		<-settled // the waits and retries end with ctx
		return false
	}
}

// awaitPubAck waits for a completion's PubAck in the worker itself (the
// settler is stopped), until publishTimeout or the stop's deadline; it
// reports whether JetStream acknowledged the completion.
func (d *Dispatcher) awaitPubAck(fut jetstream.PubAckFuture) bool {
	t := time.NewTimer(publishTimeout)
	defer t.Stop()
	select {
	case <-fut.Ok():
		return true
	case <-fut.Err():
	case <-t.C:
	case <-d.giveUpCtx.Done():
	}
	return false
}
