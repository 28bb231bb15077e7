// Package dispatcher runs effect handlers: one durable JetStream consumer per
// registered kind, many attempts at once per kind, and the outcome of each
// attempt turned into a completion, a retry or a failure in one place
// (decide).
//
// The pipeline is a Watermill message.Router over this project's own
// JetStream subscriber (internal/jetstreamsub), with Watermill's middleware
// for correlation ids, timeouts and panic recovery.
package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/jetstreamsub"
	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/pkg/effects"
)

// ConsumerName is the durable consumer the dispatchers of kind share.
func ConsumerName(kind string) string { return "dispatcher-" + kind }

// Dispatcher runs the handlers of a registry.
type Dispatcher struct {
	cfg    Config
	reg    *effects.Registry
	js     jetstream.JetStream
	client *effects.Client
	logger *slog.Logger
	m      *metrics
	// kinds are resolved once, since reg does not change after New: the
	// hot path takes no registry lock.
	kinds map[string]kindEntry
	ready atomic.Bool
}

// New returns a dispatcher for the handlers in reg. reg must not change
// afterwards.
func New(cfg Config, reg *effects.Registry, js jetstream.JetStream, logger *slog.Logger, registerer prometheus.Registerer) (*Dispatcher, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(reg.Kinds()) == 0 {
		return nil, errors.New("dispatcher: no handlers registered")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(registerer)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: metrics: %w", err)
	}
	d := &Dispatcher{cfg: cfg, reg: reg, js: js, client: effects.NewClient(js), logger: logger, m: m, kinds: map[string]kindEntry{}}
	for _, k := range reg.Kinds() {
		h, _ := reg.Lookup(k)
		d.kinds[k] = kindEntry{handler: h, m: m.forKind(k)}
	}
	return d, nil
}

// PublishThrough makes completions go out through js, a context on a NATS
// connection other than the consuming one, to keep completion publishes and
// acks off one connection's lock. (On 2 cores it made no measurable
// difference to end-to-end throughput, so the stock binary uses one
// connection.) Call it before Run.
func (d *Dispatcher) PublishThrough(js jetstream.JetStream) {
	d.client = effects.NewClient(js)
}

// Ready reports whether the consumers exist and handlers are running.
func (d *Dispatcher) Ready(context.Context) error {
	if !d.ready.Load() {
		return errors.New("dispatcher is not running")
	}
	return nil
}

func (d *Dispatcher) consumerConfig(kind string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName(kind),
		Description:   "effects dispatcher for kind " + kind,
		FilterSubject: effects.Subject(kind),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       d.cfg.AckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		// The dispatcher decides when an effect has had enough attempts and
		// records it as failed; a server-side limit would drop it silently.
		MaxDeliver:    -1,
		MaxAckPending: d.cfg.MaxAckPending,
	}
}

// Run consumes until ctx is cancelled, then shuts down gracefully: it stops
// pulling, lets running handlers finish for up to ShutdownTimeout, then
// interrupts the rest (their effects go back to the stream, not counted as
// failures) and returns nil.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !ensureStreams(ctx, d.js, d.cfg.Streams, d.logger) {
		return nil // stopped before NATS could be reached: nothing to shut down
	}
	workCtx, stopWork := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopWork(errShutdown)
	sub, err := jetstreamsub.New(d.js, jetstreamsub.Config{
		Stream:          effects.EffectsStream,
		Consumer:        d.consumerConfig,
		Concurrency:     d.cfg.Concurrency,
		WorkContext:     workCtx,
		InProgressEvery: d.cfg.AckWait / 3,
		NackDelay:       d.cfg.RetryBase,
		Logger:          d.logger,
	})
	if err != nil {
		return err
	}
	// Watermill's own info logs (handler started, ...) are debug for us.
	wlog := watermill.NewSlogLoggerWithLevelMapping(d.logger, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: d.cfg.ShutdownTimeout + 5*time.Second}, wlog)
	if err != nil {
		return err
	}
	// Order matters: settle is outermost so it sees every error, including
	// timeouts and recovered panics, and decides once.
	router.AddMiddleware(d.settle, middleware.CorrelationID, middleware.Timeout(d.cfg.HandlerTimeout))
	for _, kind := range d.reg.Kinds() {
		router.AddConsumerHandler(ConsumerName(kind), kind, sub, d.attempt)
	}

	routerCtx, stopRouter := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRouter()
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(routerCtx) }()
	select {
	case <-router.Running():
	case err := <-routerDone:
		return fmt.Errorf("dispatcher: router: %w", err)
	case <-ctx.Done():
	}
	d.ready.Store(true)
	defer d.ready.Store(false)
	if ctx.Err() == nil {
		d.logger.Info("dispatching", "kinds", d.reg.Kinds(), "concurrency", d.cfg.Concurrency)
	}

	select {
	case <-ctx.Done():
	case err := <-routerDone:
		// Every handler stopped without being asked to.
		if err == nil {
			err = errors.New("all handlers stopped")
		}
		return fmt.Errorf("dispatcher: router: %w", err)
	}

	sub.StopFetching()
	grace, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
	defer cancel()
	if err := sub.WaitSettled(grace); err != nil {
		d.logger.Warn("interrupting handlers still running after the shutdown timeout", "timeout", d.cfg.ShutdownTimeout)
		stopWork(errShutdown)
		last, cancel := context.WithTimeout(context.Background(), interruptGrace+5*time.Second)
		defer cancel()
		if err := sub.WaitSettled(last); err != nil {
			d.logger.Warn("effects left unsettled; JetStream redelivers them after the ack wait", "error", err)
		}
	}
	stopRouter()
	<-routerDone
	return nil
}

// publishTimeout bounds the publishing of one completion, retries included.
const publishTimeout = 10 * time.Second

// interruptGrace is how long an attempt whose context was cancelled has to
// return its own error before it is given up.
const interruptGrace = time.Second

// kindEntry is one registered kind: its handler and its metric series.
type kindEntry struct {
	handler *effects.Handler
	m       *kindMetrics
}

type attemptKey struct{}

// attemptState carries an attempt between settle and the handler call.
type attemptState struct {
	effect  effects.Effect
	handler *effects.Handler
	// set by d.attempt
	result   any
	deferred bool
}

// settle is the outermost middleware: it decodes the effect, runs the rest of
// the chain, decides the outcome and carries it out. It always returns nil:
// how JetStream settles the message is set on the delivery.
func (d *Dispatcher) settle(next message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		del, ok := jetstreamsub.DeliveryOf(msg)
		if !ok {
			return nil, errors.New("dispatcher: message without a JetStream delivery")
		}
		kind := strings.TrimPrefix(del.Msg.Subject(), effects.SubjectPrefix)
		entry, registered := d.kinds[kind]
		km, h := entry.m, entry.handler
		if !registered {
			// Cannot happen: consumers exist only for registered kinds.
			del.RetryAfter(d.cfg.RetryBase)
			return nil, nil
		}
		eff, err := decodeEffect(msg.Payload, kind)
		eff.EventID = msg.UUID
		eff.Attempt = del.NumDelivered()
		if err != nil {
			d.malformed(del, eff, km, err)
			return nil, nil
		}
		if eff.Attempt > d.cfg.MaxAttempts {
			// Every earlier delivery ended without an outcome: the process
			// crashed or was killed mid-attempt. Stop here rather than let a
			// handler that kills the process run forever.
			err := fmt.Errorf("no outcome after %d deliveries: the dispatcher stopped during every attempt", eff.Attempt-1)
			d.carryOut(msg, del, eff, km, outcome{verdict: failed, err: err}, nil)
			return nil, nil
		}

		st := &attemptState{effect: eff, handler: h}
		base := context.WithValue(msg.Context(), attemptKey{}, st)
		msg.SetContext(base)
		km.inFlight.Inc()
		start := time.Now()
		_, err = next(msg)
		km.duration.Observe(time.Since(start).Seconds())
		km.inFlight.Dec()

		// base descends from the work context, which only a shutdown cancels;
		// the middleware below replaced msg's context with shorter-lived ones.
		stopping := errors.Is(context.Cause(base), errShutdown)
		o := d.decide(eff.Attempt, st.deferred, err, stopping)
		d.carryOut(msg, del, eff, km, o, st.result)
		return nil, nil
	}
}

// attempt is the innermost handler: it calls the registered handler with
// panic recovery, and gives up on one that ignores its context.
func (d *Dispatcher) attempt(msg *message.Message) error {
	st := msg.Context().Value(attemptKey{}).(*attemptState)
	ctx := msg.Context()
	type result struct {
		value    any
		deferred bool
		err      error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		_, err := middleware.Recoverer(func(*message.Message) ([]*message.Message, error) {
			var err error
			r.value, r.deferred, err = st.handler.Call(ctx, st.effect, d.client.For(st.effect.Ref()))
			return nil, err
		})(msg)
		r.err = err
		done <- r
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		// Give a handler that honours ctx a moment to return its own error.
		t := time.NewTimer(interruptGrace)
		select {
		case r = <-done:
			t.Stop()
		case <-t.C:
			r.err = fmt.Errorf("handler did not return within %s of its context ending: %w", interruptGrace, context.Cause(ctx))
		}
	}
	st.result, st.deferred = r.value, r.deferred
	if r.err != nil && errors.Is(r.err, context.DeadlineExceeded) && ctx.Err() != nil && !errors.Is(context.Cause(ctx), errShutdown) {
		return fmt.Errorf("handler timed out after %s (EFFECTS_HANDLER_TIMEOUT): %w", d.cfg.HandlerTimeout, r.err)
	}
	return r.err
}

// carryOut publishes the completion an outcome calls for and tells the
// delivery how to settle.
func (d *Dispatcher) carryOut(msg *message.Message, del *jetstreamsub.Delivery, eff effects.Effect, km *kindMetrics, o outcome, result any) {
	ref := eff.Ref()
	switch o.verdict {
	case succeeded:
		raw, err := effects.MarshalResult(result)
		if err != nil {
			d.carryOut(msg, del, eff, km, outcome{verdict: failed, err: err}, nil)
			return
		}
		comp := effects.Completion{EffectID: eff.ID, Kind: eff.Kind, Status: effects.StatusSucceeded,
			Completion: raw, Attempts: eff.Attempt, CompletedAt: time.Now()}
		if !d.publish(del, ref, comp, km) {
			return
		}
	case failed:
		text := errorText(o.err)
		comp := effects.Completion{EffectID: eff.ID, Kind: eff.Kind, Status: effects.StatusFailed,
			Error: &text, Attempts: eff.Attempt, CompletedAt: time.Now()}
		if !d.publish(del, ref, comp, km) {
			return
		}
		del.Terminate(truncate(text, 256))
		d.logger.Warn("effect failed", "effect_id", eff.ID, "kind", eff.Kind, "attempts", eff.Attempt, "error", text)
		var p middleware.RecoveredPanicError
		if errors.As(o.err, &p) {
			d.logger.Error("handler panicked", "effect_id", eff.ID, "kind", eff.Kind, "panic", fmt.Sprint(p.V), "stack", p.Stacktrace)
		}
	case retried:
		del.RetryAfter(o.delay)
		d.logger.Debug("effect retried", "effect_id", eff.ID, "kind", eff.Kind, "attempt", eff.Attempt, "delay", o.delay, "error", errorText(o.err))
		var p middleware.RecoveredPanicError
		if errors.As(o.err, &p) {
			d.logger.Error("handler panicked", "effect_id", eff.ID, "kind", eff.Kind, "panic", fmt.Sprint(p.V), "stack", p.Stacktrace)
		}
	case interrupted:
		del.RetryAfter(0)
	case deferred:
	}
	km.handled[o.verdict].Inc()
}

// publish sends a completion, retrying briefly; if JetStream does not take it,
// the effect is redelivered later (the handler runs again).
func (d *Dispatcher) publish(del *jetstreamsub.Delivery, ref effects.Ref, comp effects.Completion, km *kindMetrics) bool {
	// Bounded by publishTimeout in all, so a worker slot is never held
	// longer than the handler timeout plus this (see Config.AckWait).
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	var err error
	for wait := 50 * time.Millisecond; ; wait *= 2 {
		if err = d.client.Publish(ctx, ref, comp); err == nil {
			return true
		}
		km.publishErrors.Inc()
		if ctx.Err() != nil {
			break
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	d.logger.Error("completion not published; the effect will be redelivered", "effect_id", comp.EffectID, "kind", comp.Kind, "error", err)
	del.RetryAfter(d.cfg.RetryBase)
	return false
}

// malformed handles a message that is not an effect. If it names a row, the
// row is failed with the reason; the message is terminated either way.
func (d *Dispatcher) malformed(del *jetstreamsub.Delivery, eff effects.Effect, km *kindMetrics, cause error) {
	text := "malformed effect message: " + cause.Error()
	d.logger.Warn("malformed effect message", "subject", del.Msg.Subject(), "event_id", eff.EventID, "error", cause)
	if effects.IsUUID(eff.ID) {
		comp := effects.Completion{EffectID: eff.ID, Kind: eff.Kind, Status: effects.StatusFailed,
			Error: &text, Attempts: eff.Attempt, CompletedAt: time.Now()}
		if !d.publish(del, eff.Ref(), comp, km) {
			return
		}
	}
	del.Terminate(truncate(text, 256))
	km.malformed.Inc()
}

func decodeEffect(data []byte, kind string) (effects.Effect, error) {
	var e effects.Effect
	if err := json.Unmarshal(data, &e); err != nil {
		// Keep what can be read, so the row can still be failed.
		var partial struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(data, &partial)
		return effects.Effect{ID: partial.ID, Kind: kind}, err
	}
	if e.Kind == "" {
		e.Kind = kind
	}
	switch {
	case !effects.IsUUID(e.ID):
		return e, fmt.Errorf("id %q is not a UUID", e.ID)
	case e.Kind != kind:
		return e, fmt.Errorf("kind %q does not match the subject's kind %q", e.Kind, kind)
	}
	if len(e.Payload) == 0 {
		e.Payload = json.RawMessage("{}")
	}
	return e, nil
}

func errorText(err error) string {
	var p middleware.RecoveredPanicError
	if errors.As(err, &p) {
		return fmt.Sprintf("panic: %v", p.V)
	}
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// ensureStreams creates the streams, retrying while NATS is unreachable; it
// is false when ctx ended first (a stop, not an error).
func ensureStreams(ctx context.Context, js jetstream.JetStream, o effects.StreamOptions, logger *slog.Logger) bool {
	_, ok := retry.Until(ctx, retry.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second},
		func(ctx context.Context) error { return effects.EnsureStreams(ctx, js, o) },
		func(err error, n int, wait time.Duration) {
			logger.Warn("ensuring streams; retrying", "attempt", n, "error", err, "retry_in", wait.String())
		})
	return ok
}
