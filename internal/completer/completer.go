// Package completer writes the outcomes of effects back into their rows.
//
// It drains the EFFECTS_COMPLETED stream through the durable consumer
// "effects-completer" and writes each batch of completions with one SQL
// statement, acknowledging the messages only after that statement committed.
// The rules of what may overwrite what (a succeeded row never changes, a
// duplicate changes nothing, a re-run's success replaces a failure, a newer
// failure replaces an older one) live in that statement, so several
// completers can run at once and any message can be delivered twice.
//
// Writers (default 2) batches are written at once, each by its own
// goroutine and connection, so collecting, parsing and acking overlap the
// statements and PostgreSQL commits them together.
//
// While PostgreSQL is down nothing is acknowledged: the batch in hand is
// retried with backoff and kept from redelivery with InProgress, and the
// completer resumes by itself when PostgreSQL is back.
package completer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/consume"
	"github.com/effects-run/effects/internal/keepalive"
	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/internal/redact"
	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// Completer drains completions into the effects table. Create it with [New]
// and run it with [Completer.Run].
type Completer struct {
	cfg    Config
	pool   *pgxpool.Pool
	js     jetstream.JetStream
	logger *slog.Logger
	m      *metrics
	kinds  *kindlabel.Set // bounds the kind label
	table  schema.Table
	// secrets are replaced in every error text the completer logs or
	// serves (pgx errors may quote connection settings).
	secrets []string

	// reader is the completions consumer (internal/consume), nil until it
	// is open.
	reader    atomic.Pointer[consume.Reader]
	consumers *consume.Metrics
	// lastBehind is when a writer last took a batch of at least LingerFrom
	// completions (UnixNano), 0 when the last batch taken was smaller.
	lastBehind atomic.Int64
	startErr   atomic.Pointer[string] // why it is not consuming yet
	writeErr   atomic.Pointer[string] // the last batch write's error, nil after a success

	// Warnings about unknown ids, malformed messages and refused acks are
	// sampled: a flood of them must not flood the logs.
	unknownLog, malformedLog, ackLog sampler
}

// New returns a completer writing to cfg.Table through pool and reading
// completions through js. Its metrics are registered on reg. It does no I/O.
func New(cfg Config, pool *pgxpool.Pool, js jetstream.JetStream, logger *slog.Logger, reg prometheus.Registerer) (*Completer, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || js == nil || logger == nil || reg == nil {
		return nil, errors.New("completer: pool, js, logger and reg are required")
	}
	table, err := schema.ParseTable(cfg.Table)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("completer: register metrics: %w", err)
	}
	if err := reg.Register(newOldestPendingCollector(pool, table)); err != nil {
		return nil, fmt.Errorf("completer: register metrics: %w", err)
	}
	consumers, err := consume.NewMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("completer: register metrics: %w", err)
	}
	c := &Completer{
		cfg:    cfg,
		pool:   pool,
		js:     js,
		logger: logger,
		m:      m,
		kinds:  kindlabel.New(kindlabel.DefaultMax),
		table:  table,

		consumers: consumers,
	}
	for _, s := range []string{cfg.DatabaseURL, pool.Config().ConnConfig.Password} {
		if s != "" {
			c.secrets = append(c.secrets, s)
		}
	}
	notYet := "not started"
	c.startErr.Store(&notYet)
	return c, nil
}

// ConsumerConfig is the durable consumer the completer creates or updates.
func (c *Completer) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "writes completions into the effects table",
		FilterSubject: effects.CompletedSubjects,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		// One completer holds up to Writers+3 batches (one per writer, one
		// in its queue, two in the client's pull buffer); twice that leaves
		// room for a second instance during a rolling deploy.
		MaxAckPending: 2 * (c.cfg.Writers + 3) * c.cfg.BatchSize,
		// Never give up on a completion: a failing PostgreSQL is retried
		// without redelivery, and a malformed message is terminated.
		MaxDeliver: -1,
	}
}

// Run writes completions until ctx is cancelled, then writes what it already
// holds (for at most ShutdownTimeout) and returns nil. It returns an error
// only when it cannot start: the table is missing or not migrated (the error
// wraps [schema.ErrNotMigrated]). It waits, retrying, while PostgreSQL or
// NATS cannot be reached. The durable consumer is left in place; one lost
// while it runs is created again where it was (internal/consume).
func (c *Completer) Run(ctx context.Context) error {
	if err := c.waitForTable(ctx); err != nil {
		return err
	}
	r, ok := c.startConsumer(ctx)
	if !ok {
		return nil // stopped before it started
	}
	c.reader.Store(r)

	// hard is the context of work already in hand: it outlives ctx by
	// ShutdownTimeout, so a stop finishes the batch being written instead
	// of abandoning it mid-statement.
	hard, hardCancel := context.WithCancel(context.WithoutCancel(ctx))
	var shutdownTimer atomic.Pointer[time.Timer]
	stopArming := context.AfterFunc(ctx, func() {
		shutdownTimer.Store(time.AfterFunc(c.cfg.ShutdownTimeout, hardCancel))
	})
	defer func() {
		stopArming()
		if t := shutdownTimer.Load(); t != nil {
			t.Stop()
		}
		hardCancel()
	}()

	// The pump hands every message the reader delivers to the writers'
	// inbox, from which each writer takes its batches; once the reader is
	// stopped, it hands over what the reader still holds and ends.
	in := newIntake(c.cfg.BatchSize, c.handBack)
	inbox := in.ch
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		for {
			msg, err := r.Next(context.Background())
			if err != nil {
				return // ErrStopped once it holds nothing
			}
			in.deliver(msg)
		}
	}()
	c.logger.Info("completer running", "config", c.cfg, "consumer", ConsumerName)

	// drained is closed once the consumer has handed over its last message.
	drained := make(chan struct{})
	var wg sync.WaitGroup
	for range c.cfg.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.newWorker().run(ctx, hard, inbox, drained)
		}()
	}

	<-ctx.Done()
	// Stop pulling; the reader still hands the messages the client
	// buffered to the pump, and the writers write them, until hard ends.
	// Without a server the reader drops them (nothing more will arrive):
	// the writers write what is in hand and stop.
	r.Stop()
	select {
	case <-pumped:
		close(drained)
	case <-hard.Done():
		in.close()
	}
	wg.Wait()
	// The writers are gone: from now on the intake gives every message
	// back instead of waiting for a writer that will never come.
	in.close()
	<-pumped
	if n := in.handBackQueued(); n > 0 {
		c.logger.Warn("stopping: completions not written were handed back to JetStream", "count", n)
	}
	// Everything is written or handed back: the reader records the
	// consumer's last ack floor (internal/consume's position bucket).
	r.Release(c.handBack)
	return nil
}

// intake carries messages from the reader to the writers. Once closed, it
// hands every message back at once: the pump must never block on writers
// that have stopped, or it would hang for good (with NATS down nothing else
// would ever end it).
type intake struct {
	ch       chan jetstream.Msg
	quit     chan struct{}
	quitOnce sync.Once
	back     func(jetstream.Msg)
}

func newIntake(size int, back func(jetstream.Msg)) *intake {
	return &intake{ch: make(chan jetstream.Msg, size), quit: make(chan struct{}), back: back}
}

// deliver queues msg for the writers, or hands it back once closed.
func (in *intake) deliver(msg jetstream.Msg) {
	select {
	case <-in.quit: // checked first: once closed, queue nothing
		in.back(msg)
		return
	default:
	}
	select {
	case in.ch <- msg:
	case <-in.quit:
		in.back(msg)
	}
}

func (in *intake) close() { in.quitOnce.Do(func() { close(in.quit) }) }

// handBackQueued hands back what is still queued and says how much.
func (in *intake) handBackQueued() int {
	n := 0
	for {
		select {
		case msg := <-in.ch:
			in.back(msg)
			n++
		default:
			return n
		}
	}
}

// waitForTable checks the table is there and migrated, waiting while the
// database cannot be asked.
func (c *Completer) waitForTable(ctx context.Context) error {
	err := retry.Do(ctx, c.retryPolicy(), func(ctx context.Context) error {
		qctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
		defer cancel()
		err := schema.Check(qctx, c.pool, c.cfg.Table)
		if errors.Is(err, schema.ErrNotMigrated) {
			return retry.Stop(c.redact(err))
		}
		return err
	}, func(err error, _ int, wait time.Duration) {
		err = c.redact(err)
		c.setStartErr(err)
		c.logger.Warn("cannot check the effects table; retrying", "table", c.cfg.Table, "error", err, "retry_in", wait)
	})
	if errors.Is(err, schema.ErrNotMigrated) {
		return err
	}
	return nil // checked, or stopped while the database could not be asked
}

// retryPolicy is the backoff of the completer's waits for PostgreSQL and
// NATS: from 100ms (or RetryMax if smaller) to RetryMax.
func (c *Completer) retryPolicy() retry.Policy {
	return retry.Policy{Min: min(100*time.Millisecond, c.cfg.RetryMax), Max: c.cfg.RetryMax}
}

// startConsumer makes sure the streams exist and opens the durable
// consumer, retrying while NATS is unreachable. ok is false when ctx ended
// first.
func (c *Completer) startConsumer(ctx context.Context) (r *consume.Reader, ok bool) {
	_, ok = retry.Until(ctx, c.retryPolicy(),
		func(ctx context.Context) (err error) {
			r, err = c.openConsumer(ctx)
			return err
		},
		func(err error, _ int, wait time.Duration) {
			c.setStartErr(err)
			c.logger.Warn("cannot set up the completions consumer; retrying", "error", err, "retry_in", wait.String())
		})
	return r, ok
}

func (c *Completer) openConsumer(ctx context.Context) (*consume.Reader, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := effects.EnsureStreams(ctx, c.js, c.cfg.Streams); err != nil {
		return nil, err
	}
	if drift, err := effects.StreamDrift(ctx, c.js, c.cfg.Streams); err == nil && len(drift) > 0 {
		c.logger.Warn("the streams differ from this service's EFFECTS_STREAM_MAX_AGE, EFFECTS_DUPLICATE_WINDOW or "+
			"EFFECTS_STREAM_REPLICAS; services never change a stream: run `completer migrate streams` to apply them",
			"differences", drift)
	}
	return consume.Open(ctx, c.js, consume.Config{
		Stream:   effects.CompletedStream,
		Consumer: c.ConsumerConfig(),
		// The client buffers two batches, so that the next batch is there
		// as soon as a writer is free.
		Buffer:  2 * c.cfg.BatchSize,
		Logger:  c.logger,
		Metrics: c.consumers,
	})
}

// worker takes batches from the inbox and writes them. Several run at once
// (Writers): while one waits for PostgreSQL, another collects and settles,
// and PostgreSQL gets a backend per writer. Each has its own buffers, reused
// from batch to batch.
type worker struct {
	c       *Completer
	w       *batchWriter
	msgs    []jetstream.Msg
	items   []item
	winners []int
	byID    map[[16]byte]int
	loserOf map[int]int
	rows    []*item
	// endToEnd caches effects_end_to_end_seconds' observer per kind, so a
	// row written does not look up and hash its label.
	endToEnd map[string]prometheus.Observer
}

func (c *Completer) newWorker() *worker {
	return &worker{
		c:        c,
		w:        newBatchWriter(c.pool, c.table),
		byID:     make(map[[16]byte]int, c.cfg.BatchSize),
		loserOf:  make(map[int]int),
		endToEnd: make(map[string]prometheus.Observer),
	}
}

// run writes batches from inbox until drained is closed and the inbox is
// empty, or until hard ends; then it hands back what is left.
func (wk *worker) run(ctx, hard context.Context, inbox <-chan jetstream.Msg, drained <-chan struct{}) {
	for {
		select {
		case msg := <-inbox:
			wk.process(hard, wk.collect(ctx, msg, inbox))
		case <-drained:
			for {
				select {
				case msg := <-inbox:
					wk.process(hard, wk.collect(ctx, msg, inbox))
				default:
					return
				}
			}
		case <-hard.Done():
			n := 0
			for {
				select {
				case msg := <-inbox:
					wk.c.handBack(msg)
					n++
					continue
				default:
				}
				break
			}
			if n > 0 {
				wk.c.logger.Warn("shutdown timeout: completions not written were handed back to JetStream",
					"timeout", wk.c.cfg.ShutdownTimeout, "count", n)
			}
			return
		}
	}
}

// collect takes first and whatever else is already queued, up to BatchSize,
// without waiting: under load completions queue up while a batch is written,
// so batches grow with the load and an idle completer writes at once. When
// the completer is behind — what was queued, or the last batch any writer
// took (within behindFor), holds at least LingerFrom completions — it also
// waits up to Linger for a fuller batch (not while stopping): a completion at
// low load is written at once, and under load batches fill, which costs
// PostgreSQL less per row.
func (wk *worker) collect(ctx context.Context, first jetstream.Msg, inbox <-chan jetstream.Msg) []jetstream.Msg {
	c := wk.c
	batch := append(wk.msgs[:0], first)
	for len(batch) < c.cfg.BatchSize {
		select {
		case msg := <-inbox:
			batch = append(batch, msg)
			continue
		default:
		}
		break
	}
	if c.cfg.Linger > 0 && len(batch) < c.cfg.BatchSize && ctx.Err() == nil && c.behind(len(batch)) {
		timer := time.NewTimer(c.cfg.Linger)
		defer timer.Stop()
	linger:
		for len(batch) < c.cfg.BatchSize {
			select {
			case msg := <-inbox:
				batch = append(batch, msg)
			case <-timer.C:
				break linger
			case <-ctx.Done():
				break linger
			}
		}
	}
	if len(batch) >= c.cfg.LingerFrom {
		c.lastBehind.Store(time.Now().UnixNano())
	} else {
		c.lastBehind.Store(0)
	}
	wk.msgs = batch
	return batch
}

// behindFor is how long a batch of at least LingerFrom completions keeps
// the completer counted as behind: long enough to span the other writers'
// batches, short enough that a completion arriving a second after a burst is
// written at once.
const behindFor = time.Second

// behind reports whether a writer holding queued completions should linger.
func (c *Completer) behind(queued int) bool {
	if queued >= c.cfg.LingerFrom {
		return true
	}
	last := c.lastBehind.Load()
	return last != 0 && time.Since(time.Unix(0, last)) < behindFor
}

// process writes one batch of messages and settles every message: this is
// the one place that decides Ack, Term or handing back.
func (wk *worker) process(ctx context.Context, msgs []jetstream.Msg) {
	c := wk.c
	c.m.batchSize.Observe(float64(len(msgs)))
	items := wk.items[:0]
	for _, msg := range msgs {
		it, err := parseItem(msg.Data())
		it.msg = msg
		if err != nil {
			c.m.skipped[ReasonMalformed].Inc()
			c.logMalformed(msg, err.Error())
			c.settle(msg.TermWithReason(truncate(err.Error(), 256)))
			continue
		}
		items = append(items, it)
	}
	wk.items = items
	if len(items) == 0 {
		return
	}

	wk.winners = reduce(items, wk.winners, wk.byID, wk.loserOf)
	rows := wk.rows[:0]
	for _, i := range wk.winners {
		rows = append(rows, &items[i])
	}
	sortByID(rows)
	wk.rows = rows

	// Kept alive while the write runs, so that a slow or retried write does
	// not get the batch redelivered to another completer meanwhile.
	var keep keepalive.KeepAlive
	keep.StartAll(c.cfg.AckWait/3, msgs)
	startWrites(ctx, rows)
	wk.writeBatch(ctx, rows)
	endWrites(rows)
	keep.Stop()

	var unknown []string
	handedBack := 0
	for i := range items {
		it := &items[i]
		if w, isLoser := wk.loserOf[i]; isLoser {
			// Another completion of the same id won; this one changed
			// nothing, once the winner is settled. (Should the winner have
			// been rejected, the loser is not tried alone: it lost.)
			if items[w].res.outcome == notDone {
				handedBack++
				c.handBack(it.msg)
				continue
			}
			c.m.skipped[ReasonUnchanged].Inc()
			c.settle(it.msg.Ack())
			continue
		}
		switch r := it.res; r.outcome {
		case written:
			c.m.written[it.comp.Status].Inc()
			wk.observeEndToEnd(r.kind, r.age)
			c.settle(it.msg.Ack())
		case unchanged:
			c.m.skipped[ReasonUnchanged].Inc()
			c.settle(it.msg.Ack())
		case cancelledRow:
			c.m.skipped[ReasonCancelled].Inc()
			c.settle(it.msg.Ack())
		case unknownEffect:
			c.m.skipped[ReasonUnknownEffect].Inc()
			unknown = append(unknown, it.comp.EffectID)
			c.settle(it.msg.Ack())
		case rejected:
			c.m.skipped[ReasonMalformed].Inc()
			c.logMalformed(it.msg, r.reason)
			c.settle(it.msg.TermWithReason(truncate(r.reason, 256)))
		case notDone:
			handedBack++
			c.handBack(it.msg)
		}
	}
	if len(unknown) > 0 {
		c.logger.Debug("completions for unknown effects", "effect_ids", unknown)
		if n, ok := c.unknownLog.allow(len(unknown)); ok {
			c.logger.Warn("completions for effects with no row in the table (acked and dropped)",
				"table", c.cfg.Table, "count", n, "example_effect_id", unknown[0])
		}
	}
	if handedBack > 0 {
		c.logger.Warn("stopping: completions not written were handed back to JetStream", "count", handedBack)
	}
}

// observeEndToEnd observes a written row's age under its kind's label.
// Kinds labelled as themselves are cached (bounded by kindlabel); ~invalid
// and ~other are looked up each time, so the cache stays bounded.
func (wk *worker) observeEndToEnd(kind string, age float64) {
	if o, ok := wk.endToEnd[kind]; ok {
		o.Observe(age)
		return
	}
	label := wk.c.kinds.Label(kind)
	o := wk.c.m.endToEnd.WithLabelValues(label)
	if label == kind {
		wk.endToEnd[kind] = o
	}
	o.Observe(age)
}

// writeBatch writes rows, retrying while PostgreSQL fails and splitting the
// batch when PostgreSQL refuses some value, until every row has an outcome or
// ctx ends (rows not written then stay notDone).
func (wk *worker) writeBatch(ctx context.Context, rows []*item) {
	err := wk.writeRetrying(ctx, rows)
	if err == nil || ctx.Err() != nil {
		return
	}
	// A value error: find the completion PostgreSQL refuses by halving.
	if len(rows) == 1 {
		wk.writeRefused(ctx, rows[0], err)
		return
	}
	h := len(rows) / 2
	wk.writeBatch(ctx, rows[:h])
	wk.writeBatch(ctx, rows[h:])
}

// writeRefused writes, in place of a completion PostgreSQL refused, a failed
// completion without a value whose error says why: the side effect may well
// have happened, and a row left pending would hide that. Only when even that
// is refused (it cannot be: its values are checked here) is the message
// terminated.
func (wk *worker) writeRefused(ctx context.Context, it *item, refusal error) {
	orig := it.comp
	reason := "the completion could not be stored: PostgreSQL refused it: " + storableText(refusal.Error())
	if orig.Status == effects.StatusFailed && orig.Error != nil {
		reason = storableText(*orig.Error) + " (" + reason + ")"
	}
	sub := *it
	sub.comp.Status = effects.StatusFailed
	sub.comp.Error = &reason
	sub.completion = nil
	row := []*item{&sub}
	if err := wk.writeRetrying(ctx, row); err != nil {
		if ctx.Err() == nil {
			it.res = result{outcome: rejected, reason: "PostgreSQL refused the completion: " + storableText(refusal.Error())}
		}
		return
	}
	it.res = sub.res
	it.res.substituted = true
	it.comp.Status = sub.comp.Status // counted as what was written
	wk.c.logger.Warn("PostgreSQL refused a completion; the effect is failed with the reason instead",
		"effect_id", it.comp.EffectID, "subject", it.msg.Subject(), "error", refusal)
}

// storableText is s as PostgreSQL text takes it: valid UTF-8 without NUL.
func storableText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// writeRetrying runs the statement until it succeeds, PostgreSQL refuses the
// values (the error is returned), or ctx ends.
func (wk *worker) writeRetrying(ctx context.Context, rows []*item) error {
	c := wk.c
	attempts := 0
	err := retry.Do(ctx, c.retryPolicy(), func(ctx context.Context) error {
		attempts++
		wctx, cancel := context.WithTimeout(ctx, c.cfg.WriteTimeout)
		start := time.Now()
		err := wk.w.write(wctx, rows)
		cancel()
		c.m.writeSeconds.Observe(time.Since(start).Seconds())
		if err == nil || ctx.Err() != nil {
			return err
		}
		c.m.writeErrors.Inc()
		err = c.redact(err)
		if isValueError(err) {
			if len(rows) > 1 {
				c.logger.Warn("PostgreSQL refused a value in a batch; splitting it to find which", "rows", len(rows), "error", err)
			}
			return retry.Stop(err)
		}
		msg := err.Error()
		c.writeErr.Store(&msg)
		return err
	}, func(err error, n int, wait time.Duration) {
		c.logger.Warn("writing completions failed; nothing acked, retrying", "rows", len(rows), "attempt", n,
			"retry_in", wait, "error", err)
	})
	switch {
	case err == nil:
		if c.writeErr.Swap(nil) != nil {
			c.logger.Info("writing completions again", "attempts", attempts)
		}
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return err // a value PostgreSQL refuses
}

// handBack returns a message JetStream should deliver again at once (to this
// or another completer) rather than after AckWait.
func (c *Completer) handBack(msg jetstream.Msg) { c.settle(msg.Nak()) }

// settle counts an ack, nak or term the client refused. JetStream then
// redelivers the message after AckWait; the rules make that harmless.
func (c *Completer) settle(err error) {
	if err != nil {
		c.m.ackErrors.Inc()
		if n, ok := c.ackLog.allow(1); ok {
			c.logger.Warn("acknowledging completions failed; they will be redelivered", "count", n, "example_error", err)
		}
	}
}

func (c *Completer) logMalformed(msg jetstream.Msg, reason string) {
	subject := msg.Subject()
	c.logger.Debug("malformed completion terminated", "subject", subject, "reason", reason)
	if n, ok := c.malformedLog.allow(1); ok {
		c.logger.Warn("malformed completions terminated", "count", n, "example_subject", subject, "example_reason", reason)
	}
}

// CheckPostgres is a readiness check: PostgreSQL answers and the last batch
// write did not fail.
func (c *Completer) CheckPostgres(ctx context.Context) error {
	if err := c.pool.Ping(ctx); err != nil {
		return c.redact(fmt.Errorf("ping: %w", err))
	}
	if msg := c.writeErr.Load(); msg != nil {
		return fmt.Errorf("writing completions fails: %s", *msg)
	}
	return nil
}

// CheckConsuming is a readiness check: the completer is consuming
// completions (not while its consumer is being created again).
func (c *Completer) CheckConsuming(context.Context) error {
	if r := c.reader.Load(); r != nil {
		if err := r.Ready(); err != nil {
			return fmt.Errorf("not consuming: %w", err)
		}
		return nil
	}
	if msg := c.startErr.Load(); msg != nil {
		return fmt.Errorf("not consuming: %s", *msg)
	}
	return errors.New("not consuming")
}

func (c *Completer) setStartErr(err error) {
	msg := err.Error()
	c.startErr.Store(&msg)
}

// redact removes the database URL and password from err's text.
func (c *Completer) redact(err error) error { return redact.Error(err, c.secrets...) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// sampler lets a warning through at most once per interval and counts what
// it held back.
type sampler struct {
	mu    sync.Mutex
	last  time.Time
	count int
}

const sampleEvery = 10 * time.Second

// allow adds n events and reports whether to log now, with the count of
// events since the last log.
func (s *sampler) allow(n int) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count += n
	now := time.Now()
	if now.Sub(s.last) < sampleEvery {
		return s.count, false
	}
	s.last = now
	count := s.count
	s.count = 0
	return count, true
}
