package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/effects-run/effects/internal/jsondec"
	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/pkg/effects"
)

// executor runs one kind: it owns the kind's durable consumer, a fixed pool
// of workers pulling from it, and carries out every delivery's outcome.
//
// Read a delivery from fetch to ack in this order: worker (fetch) → handle
// (decode, limits, run the middleware chain) → decide (decide.go: the one
// decision) → apply (the one place that publishes and acks).
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
	src  *liveSource

	ready atomic.Bool

	workers sync.WaitGroup
	// overrun holds the effects whose handler is still running after its
	// attempt was given up (it ignored its context), so that a new attempt
	// of the same effect never overlaps with it in this process.
	mu      sync.Mutex
	overrun map[string]struct{}
	// held are async effects waiting for their completion, by effect id.
	held map[string]*delivery
}

// delivery is one message being handled. Its outcome is applied once:
// by the worker, or by whoever gives the attempt up first (the overrun
// timer, the async deadline, an async completion, a shutdown).
type delivery struct {
	msg     jetstream.Msg
	effect  effects.Effect
	attempt int
	stored  time.Time // when the stream stored the effect

	settled atomic.Bool
	keep    *keepAlive

	mu sync.Mutex
	// completedEarly: an async handler's Done published the completion
	// before the handler returned.
	completedEarly bool
	state          heldState
	deadline       *time.Timer // async completion deadline
	heldAt         time.Time

	// trace is the attempt's span context: the completion message carries
	// it so that the completer's write joins the effect's trace.
	trace trace.SpanContext
	// run registers the running attempt for an operator's cancel.
	run runEntry
}

// settle claims the right to apply the delivery's outcome.
func (dl *delivery) settle() bool { return dl.settled.CompareAndSwap(false, true) }

// worker pulls and handles messages until fetching stops.
func (x *executor) worker(ctx context.Context) {
	for {
		x.awaitRunnable(ctx) // a paused kind pulls nothing
		if x.rate != nil {
			x.gate.Lock() // released by handle once the attempt may start
		}
		jm, err := x.src.next(ctx)
		if err == nil && ctx.Err() != nil && !x.drains() {
			_ = jm.Nak() // fetched as fetching stopped: back at once
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
func (x *executor) drains() bool { return !x.src.one && !x.async }

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
	<-x.src.stopped
	for x.d.workCtx.Err() == nil {
		jm, err := x.src.held()
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
	dl.keep = startKeepAlive(jm, x.lim.ackWait/3)
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
	dl.mu.Lock()
	dl.trace = span.SpanContext()
	dl.mu.Unlock()
	att := &Attempt{Effect: eff}
	if x.async {
		att.Done = x.done(dl)
	}
	overran := make(chan struct{})
	giveUp := time.AfterFunc(x.lim.timeout+interruptGrace, func() { x.overran(dl, overran) })
	r := x.chain(workCtx, att)
	if r.Err != nil {
		span.SetStatus(codes.Error, errorText(r.Err))
	}
	span.End()
	if !giveUp.Stop() {
		<-overran // the attempt was given up; its result comes too late
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

// finish decides a delivery's outcome and applies it, unless another path
// already settled the delivery.
func (x *executor) finish(dl *delivery, r result, stopping bool) {
	if !dl.settle() {
		return
	}
	o := decide(x.info(dl, stopping), r)
	x.apply(dl, o)
}

func (x *executor) info(dl *delivery, stopping bool) attemptInfo {
	in := attemptInfo{
		effect: dl.effect, attempt: dl.attempt, maxAttempts: x.lim.maxAttempts,
		stopping: stopping, now: time.Now(), retryBase: x.d.cfg.RetryBase,
		maxDelay: x.lim.maxRetryDelay, maxPayload: x.d.maxPayload(),
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

// apply carries out an outcome: the completion first, then the ack, nak,
// term or hold. It is the only place a delivery is settled. A completion
// that ends the delivery (ack or term) is published asynchronously and the
// rest handed to the settler, which acks once JetStream acknowledged the
// completion; the worker goes on meanwhile.
func (x *executor) apply(dl *delivery, o outcome) {
	if o.completion != nil && !x.d.opts.noCompletions {
		injectTrace(dl, o.completion)
		if (o.action == ack || o.action == term) && x.d.settler != nil {
			if fut, err := x.d.pubJS.PublishMsgAsync(o.completion); err == nil {
				if x.d.settler.add(pendingSettle{x: x, dl: dl, o: o, fut: fut, since: time.Now()}) {
					return
				}
				// Stopping: wait for this PubAck here, until the
				// shutdown's deadline at the latest.
				t := time.NewTimer(publishTimeout)
				select {
				case <-fut.Ok():
					t.Stop()
					x.settleAfterPublish(dl, o)
					return
				case <-fut.Err():
				case <-t.C:
				case <-x.d.giveUpCtx.Done():
				}
				t.Stop()
			}
			// Refused at once (too large, the window full, not
			// connected) or not acknowledged: the synchronous way.
		}
		x.publishAndSettle(x.d.giveUpCtx, dl, o)
		return
	}
	x.settleAfterPublish(dl, o)
}

// publishAndSettle publishes the outcome's completion, waiting for its ack
// and retrying briefly, then settles the delivery; a completion that could
// not be stored gets the effect redelivered.
// ctx ending stops the retries (and then the effect is redelivered).
func (x *executor) publishAndSettle(ctx context.Context, dl *delivery, o outcome) {
	if err := x.d.publishWithin(ctx, o.completion); err != nil {
		x.km.publishErrors.Inc()
		x.logger.Error("completion not published; the effect will be redelivered", "effect_id", dl.effect.ID, "kind", x.kind, "error", err)
		dl.keep.stop()
		x.report(dl, dl.msg.NakWithDelay(x.d.cfg.RetryBase))
		return
	}
	x.settleAfterPublish(dl, o)
}

// settleAfterPublish acks, naks, terms or holds the delivery once its
// completion (if any) is stored, and counts and logs the outcome.
func (x *executor) settleAfterPublish(dl *delivery, o outcome) {
	if o.action != hold {
		dl.keep.stop()
	}
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
	case hold:
		x.hold(dl)
	}
	x.km.handled[o.verdict].Inc()
	switch o.verdict {
	case failed:
		x.logger.Warn("effect failed", "effect_id", dl.effect.ID, "kind", x.kind, "attempts", dl.attempt, "error", errorText(o.err))
	case retried:
		x.logger.Debug("effect retried", "effect_id", dl.effect.ID, "kind", x.kind, "attempt", dl.attempt, "delay", o.delay, "error", errorText(o.err))
	case malformed:
		x.logger.Warn("malformed effect message", "subject", dl.msg.Subject(), "event_id", dl.effect.EventID, "error", o.err)
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

// keepAlive sends InProgress for a message every interval until stopped,
// so that JetStream does not redeliver a message still being worked on
// (a rate-limit wait, an async effect held until its completion). It uses
// a timer, not a goroutine, and is never re-armed once stopped.
type keepAlive struct {
	mu      sync.Mutex
	msg     jetstream.Msg
	every   time.Duration
	t       *time.Timer
	stopped bool
}

func startKeepAlive(msg jetstream.Msg, every time.Duration) *keepAlive {
	k := &keepAlive{msg: msg, every: every}
	if every > 0 {
		k.mu.Lock()
		k.t = time.AfterFunc(every, k.fire)
		k.mu.Unlock()
	}
	return k
}

func (k *keepAlive) fire() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	_ = k.msg.InProgress() // a lost one is made up by the next
	k.t.Reset(k.every)
}

func (k *keepAlive) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	if k.t != nil {
		k.t.Stop()
	}
}

// armed reports whether the timer may still fire (for tests).
func (k *keepAlive) armed() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return !k.stopped
}

// liveSource is where a kind's workers take messages from: the consumer's
// iterator, shared by the workers (it serialises them), or, for a
// rate-limited kind, one pull request per message (one). Either is
// re-created when the consumer is deleted.
//
// A rate-limited kind fetches one message at a time because its workers
// wait for the limit while holding a message: messages pulled ahead would
// wait in the client's buffer, unseen and not kept alive, and come back
// after the ack wait while still buffered. Pulled one by one, every
// delivered message is in a worker's hands, kept alive. The cost, a pull
// request per message, is small beside a rate limit.
type liveSource struct {
	x   *executor
	cc  jetstream.ConsumerConfig
	one bool
	// stopped is closed once stop has drained (or stopped) the iterator.
	stopped chan struct{}

	mu   sync.Mutex
	gen  int // bumped by every re-creation
	cons jetstream.Consumer
	it   jetstream.MessagesContext // nil when one
}

// fetchOneWait is how long one pull request of a rate-limited kind waits.
const fetchOneWait = 5 * time.Second

// open creates (or finds) the consumer and, unless one, starts its
// iterator, retrying until it works or ctx ends. The caller holds s.mu or
// has not shared s yet.
func (s *liveSource) open(ctx context.Context) error {
	x := s.x
	_, ok := retry.Until(ctx, retry.Policy{Min: 50 * time.Millisecond, Max: 2 * time.Second},
		func(ctx context.Context) error {
			// On a consumer just deleted, nats-server 2.15 can fail the
			// create with err_code 10012 while it still removes the old
			// one's files; a retry a moment later works.
			cons, err := x.d.js.CreateOrUpdateConsumer(ctx, effects.EffectsStream, s.cc)
			if err != nil {
				return err
			}
			var it jetstream.MessagesContext
			if !s.one {
				it, err = cons.Messages(jetstream.PullMaxMessages(x.lim.concurrency), jetstream.PullHeartbeat(pullHeartbeat))
				if err != nil {
					return err
				}
			}
			s.cons, s.it = cons, it
			s.gen++
			return nil
		},
		func(err error, n int, wait time.Duration) {
			x.logger.Warn("creating the kind's consumer; retrying", "kind", x.kind, "consumer", s.cc.Durable, "attempt", n, "error", err, "retry_in", wait.String())
		})
	if !ok {
		return ctx.Err()
	}
	return nil
}

func (s *liveSource) current() (int, jetstream.Consumer, jetstream.MessagesContext) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen, s.cons, s.it
}

func (s *liveSource) next(ctx context.Context) (jetstream.Msg, error) {
	for {
		gen, cons, it := s.current()
		if cons == nil {
			return nil, jetstream.ErrMsgIteratorClosed
		}
		var jm jetstream.Msg
		var err error
		if it != nil {
			jm, err = it.Next(jetstream.NextContext(ctx))
		} else {
			fctx, cancel := context.WithTimeout(ctx, fetchOneWait)
			jm, err = cons.Next(jetstream.FetchContext(fctx))
			cancel()
			if err != nil && ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) {
				// Nothing to do for now, or the consumer is gone (a pull
				// to a deleted stream's consumer is answered by no one).
				if s.gone(ctx, cons) {
					if err := s.reopen(ctx, gen); err != nil {
						return nil, err
					}
				}
				continue
			}
		}
		if err == nil {
			return jm, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
			(it != nil && errors.Is(err, jetstream.ErrMsgIteratorClosed)) {
			if err := s.reopen(ctx, gen); err != nil {
				return nil, err
			}
			continue
		}
		// Missing heartbeats, a reconnect: the iterator recovers by itself,
		// unless the consumer is gone without a word (its stream was
		// deleted while no pull request was waiting to be told).
		level := slog.LevelWarn
		if errors.Is(err, jetstream.ErrNoHeartbeat) {
			level = slog.LevelDebug
			if s.gone(ctx, cons) {
				if err := s.reopen(ctx, gen); err != nil {
					return nil, err
				}
				continue
			}
		}
		s.x.logger.Log(ctx, level, "jetstream fetch", "kind", s.x.kind, "error", err)
		if it == nil {
			if err := sleep(ctx, 100*time.Millisecond); err != nil { // no hot loop while NATS is away
				return nil, err
			}
		}
	}
}

// gone asks the server whether the consumer (or its stream) no longer
// exists. Any other answer, or none, is "not gone": the fetch loop keeps
// trying as before.
func (s *liveSource) gone(ctx context.Context, cons jetstream.Consumer) bool {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := cons.Info(ictx)
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// reopen re-creates a consumer found gone (once, whichever worker sees it
// first).
func (s *liveSource) reopen(ctx context.Context, gen int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen {
		return nil // another worker did it
	}
	x := s.x
	x.ready.Store(false)
	x.km.consumerLost.Inc()
	x.logger.Warn("the kind's consumer is gone; creating it again", "kind", x.kind, "consumer", s.cc.Durable)
	if s.it != nil {
		s.it.Stop()
	}
	if err := s.open(ctx); err != nil {
		return err
	}
	x.ready.Store(true)
	x.logger.Info("the kind's consumer is back", "kind", x.kind, "consumer", s.cc.Durable)
	return nil
}

// stop ends pulling: no more pull requests, so that nothing more is
// delivered to this process (an interrupted effect nak'ed during the
// shutdown would otherwise come straight back to it). Drain, not Stop:
// Stop discards what the iterator already holds, which JetStream would
// redeliver only after the ack wait; drained, giveBack returns it at once.
// While disconnected a drain cannot flush: then Stop.
func (s *liveSource) stop() {
	defer close(s.stopped)
	_, _, it := s.current()
	if it == nil {
		return
	}
	if nc := s.x.d.js.Conn(); nc != nil && !nc.IsConnected() {
		it.Stop()
		return
	}
	it.Drain()
}

// held returns the next message the stopped iterator still holds;
// jetstream.ErrMsgIteratorClosed once it holds none.
func (s *liveSource) held() (jetstream.Msg, error) {
	_, _, it := s.current()
	if it == nil {
		return nil, jetstream.ErrMsgIteratorClosed
	}
	return it.Next()
}

// giveBack naks, without delay, what the stopped iterator still holds, so
// that those effects come back at once rather than after the ack wait.
func (s *liveSource) giveBack() {
	_, _, it := s.current()
	if it == nil {
		return
	}
	for {
		jm, err := it.Next()
		if err != nil {
			return // ErrMsgIteratorClosed once drained
		}
		_ = jm.Nak()
	}
}

// pullHeartbeat is the idle heartbeat of the pull requests, and so how long
// the iterator can sit without a pull request before it notices. nats.go
// (v1.55.0) decides to send the next pull request only when Next is called,
// and skips it while the previous one is still being written; if the
// messages of that previous request are all taken before the write
// finishes, Next waits for messages nobody asked for until heartbeats are
// missed (2 × heartbeat). A short heartbeat bounds that stall.
const pullHeartbeat = time.Second
