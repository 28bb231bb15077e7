// Package dispatcher runs effect handlers: one executor per registered kind,
// each owning the kind's durable JetStream consumer and a fixed pool of
// workers, with the kind's own limits (concurrency, rate across processes,
// attempt timeout, attempts, retry delay, async completion deadline).
//
// A delivery's outcome — completion published, ack, nak with a delay, term,
// or held until an async completion — is decided by one function, decide,
// from the handler's result, and JetStream is told it in one place,
// executor.settle (settle.go), whichever path ends the delivery.
// The handler pipeline's cross-cutting concerns are [Middleware]: plain
// func(Handler) Handler.
package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/consume"
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
	pubJS  jetstream.JetStream // completions go out through this one
	pub    completionPublisher // on pubJS's connection; nil without one
	// settler acks effects once their completion's PubAck arrived; nil
	// outside Run.
	settler *settler
	logger  *slog.Logger
	m       *metrics
	execs   []*executor
	opts    options
	// ctl is the copy of the operator controls (WithControls); nil
	// without.
	ctl *controls

	// maxAge is the effects stream's MaxAge as the server has it.
	maxAge time.Duration
	// fetchCtx ends when fetching stops; workCtx (the parent of every
	// attempt) only when a shutdown's grace period ran out.
	fetchCtx context.Context
	workCtx  context.Context
	// giveUpCtx ends at the shutdown's deadline: whatever still waits then
	// (a PubAck, a publish's retries) stops waiting and leaves its effect
	// to JetStream's redelivery.
	giveUpCtx context.Context
	// stopDeadline is when the shutdown must be over (zero until a stop
	// began); Main gives the connection's drain what is left of it.
	stopDeadline time.Time
	running      atomic.Bool
	runOnce      sync.Once
}

// New returns a dispatcher for the handlers in reg. reg must not change
// afterwards. Without opts it is the effects dispatcher; see [ConsumerOption] for a
// team's own consumer.
func New(cfg Config, reg *effects.Registry, js jetstream.JetStream, logger *slog.Logger, registerer prometheus.Registerer, opts ...ConsumerOption) (*Dispatcher, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("dispatcher: %w", err)
		}
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	kinds := reg.Kinds()
	if len(kinds) == 0 {
		return nil, errors.New("dispatcher: no handlers registered")
	}
	for k := range cfg.KindConcurrency {
		if _, ok := reg.Lookup(k); !ok {
			return nil, fmt.Errorf("EFFECTS_KIND_CONCURRENCY names kind %q, which has no handler (registered: %v)", k, kinds)
		}
	}
	for k := range cfg.KindRate {
		if _, ok := reg.Lookup(k); !ok {
			return nil, fmt.Errorf("EFFECTS_KIND_RATE names kind %q, which has no handler (registered: %v)", k, kinds)
		}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(registerer)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: metrics: %w", err)
	}
	d := &Dispatcher{cfg: cfg, reg: reg, js: js, pubJS: js, pub: newCompletionPublisher(js), opts: o, client: effects.NewClient(js), logger: logger, m: m,
		fetchCtx: context.Background(), workCtx: context.Background(), giveUpCtx: context.Background()}
	for _, k := range kinds {
		h, _ := reg.Lookup(k)
		if o.noCompletions && h.IsAsync() {
			return nil, fmt.Errorf("dispatcher: kind %s has an asynchronous handler, which completes effects; WithoutCompletions takes synchronous handlers only", k)
		}
		lim, err := cfg.limitsFor(k, h.Options())
		if err != nil {
			return nil, err
		}
		km := m.forKind(k)
		x := &executor{d: d, kind: k, lim: lim, km: km, logger: logger, async: h.IsAsync(),
			overrun: map[string]struct{}{}, held: map[string]*delivery{}}
		x.newQueues()
		// Recovery outermost, so that a panic anywhere below is a result;
		// the timeout innermost, so that it bounds the handler alone.
		x.chain = Chain(call(h), Recover, measure(km), Timeout(lim.timeout))
		d.execs = append(d.execs, x)
	}
	if o.controls {
		if d.ctl, err = newControls(d, registerer); err != nil {
			return nil, fmt.Errorf("dispatcher: metrics: %w", err)
		}
	}
	return d, nil
}

// PublishThrough makes completions go out through js, a context on a NATS
// connection other than the consuming one. Call it before Run.
func (d *Dispatcher) PublishThrough(js jetstream.JetStream) {
	d.pubJS = js
	d.pub = newCompletionPublisher(js)
	d.client = effects.NewClient(js)
}

// Ready reports whether every kind's consumer exists and its workers run.
func (d *Dispatcher) Ready(context.Context) error {
	if !d.running.Load() {
		return errors.New("dispatcher is not running")
	}
	for _, x := range d.execs {
		if x.src == nil {
			return fmt.Errorf("kind %s: its consumer %s is not open yet", x.kind, x.consumerName())
		}
		if err := x.src.Ready(); err != nil {
			return fmt.Errorf("kind %s: %w", x.kind, err)
		}
		if x.rate != nil {
			if err := x.rate.health(); err != nil {
				return fmt.Errorf("kind %s: %w", x.kind, err)
			}
		}
	}
	if d.ctl != nil {
		return d.ctl.ready()
	}
	return nil
}

func (d *Dispatcher) fetching() bool { return d.fetchCtx.Err() == nil }

func (d *Dispatcher) maxPayload() int64 {
	if nc := d.pubJS.Conn(); nc != nil {
		return nc.MaxPayload()
	}
	return 0
}

func (x *executor) consumerName() string { return x.d.opts.prefix + x.kind }

func (x *executor) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       x.consumerName(),
		Description:   "effects dispatcher for kind " + x.kind,
		FilterSubject: effects.Subject(x.kind),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       x.lim.ackWait,
		DeliverPolicy: x.d.opts.deliver.policy(),
		// The dispatcher decides when an effect has had enough attempts and
		// records it as failed; a server-side limit would drop it silently.
		MaxDeliver:    -1,
		MaxAckPending: x.d.cfg.MaxAckPending,
	}
}

// Run consumes until ctx is cancelled, then shuts down gracefully within
// ShutdownTimeout in all: it stops pulling, lets running handlers (and the
// messages already pulled ahead) finish, interrupts what still runs shortly
// before the deadline (those effects go back to the stream, not counted as
// failures), waits for the completions on their way to be acknowledged, and
// returns nil by the deadline. A Dispatcher runs once.
func (d *Dispatcher) Run(ctx context.Context) error {
	first := false
	d.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("dispatcher: Run called twice")
	}
	if !ensureStreams(ctx, d.js, d.cfg.Streams, d.logger) {
		return nil // stopped before NATS could be reached: nothing to shut down
	}
	if info, err := d.stream(ctx); err == nil {
		d.maxAge = info.Config.MaxAge
	} else {
		return nil // stopped
	}
	fetchCtx, stopFetch := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFetch()
	workCtx, stopWork := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopWork(errShutdown)
	giveUpCtx, giveUp := context.WithCancel(context.Background())
	defer giveUp()
	d.fetchCtx, d.workCtx, d.giveUpCtx = fetchCtx, workCtx, giveUpCtx

	var rates *rateStore
	var subs []*nats.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	for _, x := range d.execs {
		if !x.lim.rate.IsZero() {
			if rates == nil {
				rates = &rateStore{js: d.js, replicas: d.cfg.Streams.Replicas, logger: d.logger, created: d.m.rateCreated}
				if !rates.open(ctx) {
					d.stopSources()
					return nil // stopped while NATS was unreachable
				}
			}
			x.rate = newRateLimiter(rates, x.kind, x.lim.rate.Interval(), d.logger, d.m.rateUp.WithLabelValues(x.kind))
		}
		if x.async {
			s, err := x.listenCompletions(d.js.Conn())
			if err != nil {
				d.stopSources()
				return fmt.Errorf("dispatcher: listen to %s completions: %w", x.kind, err)
			}
			subs = append(subs, s)
		}
		if !x.open(ctx) {
			d.stopSources() // stopped while NATS was unreachable
			return nil
		}
	}
	d.settler = newSettler()
	if d.ctl != nil {
		// The watcher outlives the workers: attempts started during the
		// stop still ask it.
		ctlCtx, stopCtl := context.WithCancel(context.WithoutCancel(ctx))
		go d.ctl.run(ctlCtx)
		defer func() { stopCtl(); <-d.ctl.done }()
	}
	for _, x := range d.execs {
		x.workers.Add(x.lim.concurrency)
		for range x.lim.concurrency {
			go x.worker(fetchCtx)
		}
	}
	d.running.Store(true)
	defer d.running.Store(false)
	d.logger.Info("dispatching", "kinds", d.reg.Kinds(), "concurrency", d.cfg.Concurrency)

	<-ctx.Done()

	// One deadline for the whole stop: the handlers running and the
	// messages pulled ahead, then the completions waiting for their PubAck.
	// An orchestrator kills the process a fixed time after SIGTERM; each
	// phase waiting a timeout of its own would add up past it.
	deadline := time.Now().Add(d.cfg.ShutdownTimeout)
	d.stopDeadline = deadline
	giveUpTimer := time.AfterFunc(d.cfg.ShutdownTimeout, giveUp)
	defer giveUpTimer.Stop()
	stopFetch()
	for _, x := range d.execs {
		x.src.Stop()
	}
	allStopped := make(chan struct{})
	go func() {
		for _, x := range d.execs {
			x.workers.Wait()
		}
		close(allStopped)
	}()
	// Handlers still running are interrupted a little before the deadline,
	// so that they have the rest to return and their effects to be given
	// back.
	grace := time.NewTimer(time.Until(deadline.Add(-stopReserve(d.cfg.ShutdownTimeout))))
	defer grace.Stop()
	select {
	case <-allStopped:
	case <-grace.C:
		d.logger.Warn("interrupting handlers still running near the end of the shutdown timeout", "timeout", d.cfg.ShutdownTimeout)
		stopWork(errShutdown)
		select {
		case <-allStopped:
		case <-giveUpCtx.Done():
			d.logger.Warn("handlers still running at the shutdown deadline; their effects are left unsettled and JetStream redelivers them after the ack wait")
		}
	}
	// Effects whose completion is on its way are acked once JetStream
	// stored it, until the deadline. What is left then is neither acked nor
	// nak'ed: JetStream redelivers it after the ack wait, and a completion
	// that was stored meanwhile is deduplicated (its Nats-Msg-Id) and
	// written once by the completer.
	if !d.settler.stop(giveUpCtx) {
		d.logger.Warn("effects whose completion was not acknowledged by the shutdown deadline are left unsettled; JetStream redelivers them after the ack wait")
	}
	for _, x := range d.execs {
		x.src.Release(x.giveBack)
		x.releaseHeld()
	}
	return nil
}

// stopSources stops the consumers opened by a Run that ends before its
// workers started.
func (d *Dispatcher) stopSources() {
	for _, x := range d.execs {
		if x.src != nil {
			x.src.Release(nil) // nothing was fetched: no worker ran
		}
	}
}

// open binds to, updates or creates the kind's consumer and starts reading
// it, retrying until it works; false when ctx ended first.
func (x *executor) open(ctx context.Context) bool {
	cfg := consume.Config{
		Stream:   effects.EffectsStream,
		Consumer: x.consumerConfig(),
		Buffer:   x.lim.concurrency,
		Logger:   x.logger.With("kind", x.kind),
		Metrics:  x.d.m.consumers,
	}
	if x.rate != nil {
		cfg.Buffer = 0 // see drains
	}
	_, ok := retry.Until(ctx, retry.Policy{Min: 50 * time.Millisecond, Max: 2 * time.Second},
		func(ctx context.Context) (err error) {
			x.src, err = consume.Open(ctx, x.d.js, cfg)
			return err
		},
		func(err error, n int, wait time.Duration) {
			x.logger.Warn("creating the kind's consumer; retrying", "kind", x.kind, "consumer", cfg.Consumer.Durable, "attempt", n, "error", err, "retry_in", wait.String())
		})
	return ok
}

func (d *Dispatcher) stream(ctx context.Context) (*jetstream.StreamInfo, error) {
	var info *jetstream.StreamInfo
	_, ok := retry.Until(ctx, retry.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second},
		func(ctx context.Context) error {
			s, err := d.js.Stream(ctx, effects.EffectsStream)
			if err != nil {
				return err
			}
			info, err = s.Info(ctx)
			return err
		},
		func(err error, n int, wait time.Duration) {
			d.logger.Warn("reading the effects stream; retrying", "attempt", n, "error", err, "retry_in", wait.String())
		})
	if !ok {
		return nil, ctx.Err()
	}
	return info, nil
}

// publishTimeout bounds the publishing of one completion, retries included.
const publishTimeout = 10 * time.Second

// stopReserve is the part of the shutdown timeout kept, at its end, for
// handlers interrupted by the stop to return and for their effects and
// completions to be settled: a fifth of it, at most 3s.
func stopReserve(timeout time.Duration) time.Duration {
	return min(timeout/5, 3*time.Second)
}

// StopDeadline is when the last Run's shutdown must be over: zero until its
// context ended. [Main] gives the NATS connection's drain what is left.
func (d *Dispatcher) StopDeadline() time.Time { return d.stopDeadline }

// interruptGrace is how long an attempt whose context ended has to return
// before it is given up.
const interruptGrace = time.Second

// publishWithin stores a completion, waiting for JetStream's ack, trying
// again briefly. It is bounded: at most publishTimeout in all (less when
// parent ends first), and one async publish in flight at a time per
// completion. A completion too large to publish is not tried again.
func (d *Dispatcher) publishWithin(parent context.Context, msg *nats.Msg) error {
	ctx, cancel := context.WithTimeout(parent, publishTimeout)
	defer cancel()
	return retry.Do(ctx, publishPolicy, func(ctx context.Context) error {
		err := effects.PublishAndWait(ctx, d.pubJS, msg)
		if errors.Is(err, effects.ErrTooLarge) || errors.Is(err, nats.ErrMaxPayload) {
			return retry.Stop(err)
		}
		return err
	}, nil)
}

// publishPolicy is the backoff between a completion's publishes.
var publishPolicy = retry.Policy{Min: 50 * time.Millisecond, Max: 2 * time.Second}

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
