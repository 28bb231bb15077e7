package ingest

// The table source (EFFECTS_SOURCE=table): effects come straight from the
// effects table instead of Hasura's webhook.
//
// One ingest at a time, the owner of the table's advisory lock, reads the
// rows in commit order from a cursor (table_cursor.go): each batch is read
// after the last, published asynchronously with Nats-Msg-Id = row id
// (as one fast batch where it may), and once JetStream acked the whole
// batch the cursor is written, one UPDATE of one row per batch. Nothing is
// written to the rows themselves. Hence:
//   - no committed row is missed: the cursor is a snapshot, which tells the
//     transactions that had finished from those still running, so a long
//     transaction that commits late is found when it commits, and the rows
//     of the others are not held up meanwhile;
//   - a rolled-back row was never visible, so it is never published;
//   - the cursor moves only after the acks: a crash at any moment leaves it
//     at the last batch acked, and the next owner publishes the batches in
//     flight again, which JetStream's duplicate window stores once (same
//     message id);
//   - other replicas wait for the lock and take over when the owner's
//     session ends.
// Up to EFFECTS_TABLE_WORKERS batches are in flight at once (the next is
// read while the last waits for its acks); the cursor moves through them
// in order. LISTEN/NOTIFY (a statement trigger of migration 003) only wakes
// an idle owner early; a poll every EFFECTS_TABLE_POLL_INTERVAL is what
// guarantees that every row is found.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// TableSource publishes the new rows of the effects table. Create it with
// [NewTableSource] and run it with [TableSource.Run].
type TableSource struct {
	cfg     TableConfig
	table   schema.Table
	pool    *pgxpool.Pool
	js      jetstream.JetStream
	logger  *slog.Logger
	metrics *metrics
	tm      *tableMetrics
	fast    *fastPath // publishes a batch as one JetStream fast batch
	sql     cursorSQL

	// allowed is EFFECTS_KINDS as a set; nil allows every valid kind.
	allowed map[string]struct{}

	// wake: a notification (or a reconnected listener) sends to it without
	// blocking.
	wake chan struct{}

	// lastErr is the last failure, nil after a success: the readiness
	// check.
	lastErr atomic.Pointer[error]
	started atomic.Bool

	// lastErrLog keeps an outage from logging once per try.
	lastErrLog atomic.Int64

	// afterPublish, when set (tests, benchmarks), runs after a batch's
	// acks and before its cursor write, with the batch's size; an error
	// stops the owner there, as a crash would.
	afterPublish func(rows int) error
}

// NewTableSource returns a table source reading cfg.Table through pool and
// publishing through js. It fills cfg's defaults and validates it. Metrics
// are registered on reg (nil: unregistered); effects_ingested_total is shared
// with a webhook [Server] on the same registry. A nil logger discards.
func NewTableSource(cfg TableConfig, pool *pgxpool.Pool, js jetstream.JetStream, logger *slog.Logger, reg prometheus.Registerer) (*TableSource, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || js == nil {
		return nil, errors.New("ingest: table source needs a PostgreSQL pool and a JetStream context")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t, _ := schema.ParseTable(cfg.Table) // validated above
	m, err := newMetrics(reg, kindlabel.New(kindlabel.DefaultMax, cfg.Kinds...), false)
	if err != nil {
		return nil, err
	}
	tm, err := newTableMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &TableSource{
		cfg: cfg, table: t, pool: pool, js: js, logger: logger, metrics: m, tm: tm,
		sql:  newCursorSQL(t),
		wake: make(chan struct{}, 1),
	}
	if len(cfg.Kinds) > 0 {
		s.allowed = make(map[string]struct{}, len(cfg.Kinds))
		for _, k := range cfg.Kinds {
			s.allowed[k] = struct{}{}
		}
	}
	s.fast = newFastPath(js, logger, !cfg.NoFastBatch)
	return s, nil
}

// Ready is a readiness check: nil once the source owns the cursor and a
// batch went through, or waits for the owner to go, and the last try did
// not fail.
func (s *TableSource) Ready(context.Context) error {
	if p := s.lastErr.Load(); p != nil {
		return fmt.Errorf("table source: %w", *p)
	}
	if !s.started.Load() {
		return errors.New("table source starting")
	}
	return nil
}

// Run publishes rows until ctx is cancelled, then lets the batches in flight
// finish (for up to cfg.ShutdownTimeout) and returns nil. It waits for NATS
// and PostgreSQL at start and through outages; it returns an error only when
// the table is missing or not migrated.
func (s *TableSource) Run(ctx context.Context) error {
	s.logger.Info("table source starting", "config", s.cfg)
	if err := s.waitReady(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil
	}
	s.logger.Info("table source running", "table", s.table.String(), "channel", s.table.NotifyChannel())

	var wg sync.WaitGroup
	bgCtx, stopBg := context.WithCancel(ctx)
	wg.Go(func() { s.listen(bgCtx) })
	wg.Go(func() { s.watchBacklog(bgCtx) })
	s.own(ctx)
	s.fast.close()
	stopBg()
	wg.Wait()
	return nil
}

// waitReady ensures the streams and checks the table, retrying while NATS or
// PostgreSQL cannot be reached.
func (s *TableSource) waitReady(ctx context.Context) error {
	var fatal error
	retry.Until(ctx, retry.Policy{Min: ensureBackoffMin, Max: s.cfg.RetryMax}, func(ctx context.Context) error {
		if nc := s.js.Conn(); nc != nil && !nc.IsConnected() {
			return fmt.Errorf("NATS: %w", errNotConnected)
		}
		actx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
		defer cancel()
		if err := effects.EnsureStreams(actx, s.js, s.cfg.Streams); err != nil {
			return fmt.Errorf("NATS: ensure streams: %w", err)
		}
		s.fast.usable(actx) // reads whether the stream allows fast batches
		err := schema.Check(actx, s.pool, s.cfg.Table)
		if errors.Is(err, schema.ErrNotMigrated) {
			fatal = err
			return nil
		}
		if err != nil {
			return fmt.Errorf("PostgreSQL: %w", err)
		}
		return nil
	}, func(err error, n int, wait time.Duration) {
		s.lastErr.Store(&err)
		s.logger.Warn("table source waiting for its dependencies; retrying", "attempt", n, "retry_in", wait.String(), "error", err)
	})
	if fatal != nil {
		return fmt.Errorf("ingest: EFFECTS_SOURCE=table: %w", fatal)
	}
	return nil
}

// own takes the table source's advisory lock, waiting while another ingest
// holds it, and publishes while it holds it, until ctx ends. Losing the
// connection (PostgreSQL restarting, a network failure) gives the lock up;
// after a backoff it connects and waits for the lock again.
func (s *TableSource) own(ctx context.Context) {
	backoff := retry.Policy{Min: ensureBackoffMin, Max: s.cfg.RetryMax}.Backoff()
	b := &backoff
	for ctx.Err() == nil {
		err := s.ownOnce(ctx, b)
		if ctx.Err() != nil {
			return
		}
		s.failed(ctx, err, b)
	}
}

// failed records err (not ready, counted, logged at most every 10s) and
// waits out the backoff.
func (s *TableSource) failed(ctx context.Context, err error, b *retry.Backoff) {
	s.lastErr.Store(&err)
	s.tm.errors.Inc()
	wait := b.Next()
	s.logFailure(err, wait)
	_ = retry.Sleep(ctx, wait) // ctx's end is the caller's to see
}

// ownOnce connects, waits for the lock and publishes until ctx ends or the
// connection fails. A failure that leaves the connection usable (NATS down,
// a publish not acked) keeps the lock: the owner backs off and publishes
// again from the cursor. Closing the connection gives the lock up.
func (s *TableSource) ownOnce(ctx context.Context, b *retry.Backoff) error {
	cctx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
	conn, err := pgx.ConnectConfig(cctx, s.pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return fmt.Errorf("PostgreSQL: connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
	}()
	// Waiting for the lock is being ready: this replica takes over when
	// the owner goes.
	s.ok()
	if _, err := conn.Exec(ctx, s.sql.lock, SourceLockKeyHigh, s.table.Quoted()); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("PostgreSQL: wait for the table source lock: %w", err)
	}
	s.tm.owner.Set(1)
	defer s.tm.owner.Set(0)
	s.logger.Info("table source: this ingest publishes the table (it holds the table source lock)", "table", s.table.String())
	for {
		err := s.publish(ctx, conn, b)
		if ctx.Err() != nil {
			return nil
		}
		pctx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
		lost := conn.Ping(pctx) != nil
		cancel()
		if lost || errors.Is(err, errCursorMoved) {
			return err
		}
		s.failed(ctx, err, b)
	}
}

// job is a batch in flight: read, being published.
type job struct {
	rows []claimedRow
	next cursorPos // the cursor after this batch
	done chan struct{}
	// set before done is closed
	outcomes []pending
	err      error
}

// publish runs the owner's loop on conn, which holds the lock: read a
// batch, start publishing it, read the next while earlier ones wait for
// their acks (at most Workers in flight), and move the cursor through the
// acked batches in order. It returns when ctx ends (after the batches in
// flight), or at the first failure, leaving the cursor at the last batch
// acked.
func (s *TableSource) publish(ctx context.Context, conn *pgx.Conn, b *retry.Backoff) error {
	// Statements are not cut short by ctx: a batch read is published and
	// its cursor written (or given up) within PublishTimeout plus a
	// statement, so a stop republishes nothing.
	dbCtx := context.WithoutCancel(ctx)
	lctx, cancel := s.stmtCtx(dbCtx)
	pos, version, err := s.loadCursor(lctx, conn, true)
	if err == nil {
		err = s.checkCursor(lctx, conn, pos)
	}
	cancel()
	if err != nil {
		return err
	}
	var queue []*job
	defer func() {
		for _, j := range queue {
			<-j.done // published or not, nothing more to do
		}
	}()
	poll := time.NewTimer(0)
	defer poll.Stop()
	caughtUp := false
	for {
		// Read while there is room and rows may be waiting.
		for !caughtUp && len(queue) < s.cfg.Workers && ctx.Err() == nil {
			if nc := s.js.Conn(); nc != nil && !nc.IsConnected() {
				return fmt.Errorf("NATS: %w", errNotConnected)
			}
			sctx, cancel := s.stmtCtx(dbCtx)
			rows, next, err := s.readBatch(sctx, conn, pos)
			cancel()
			if err != nil {
				return err
			}
			pos = next
			if len(rows) < s.cfg.BatchSize {
				caughtUp = true
			}
			if len(rows) == 0 {
				break
			}
			s.tm.batchSize.Observe(float64(len(rows)))
			j := &job{rows: rows, next: next, done: make(chan struct{})}
			go s.publishBatch(ctx, j)
			queue = append(queue, j)
		}
		if len(queue) == 0 {
			s.ok()
			b.Reset()
			if ctx.Err() != nil {
				return nil
			}
			resetTimer(poll, s.cfg.PollInterval)
			select {
			case <-ctx.Done():
				return nil
			case <-poll.C:
			case <-s.wake:
			}
			caughtUp = false
			continue
		}
		// The oldest batch: once acked, the cursor moves past it.
		j := queue[0]
		<-j.done
		queue = queue[1:]
		if j.err != nil {
			return j.err
		}
		if s.afterPublish != nil {
			if err := s.afterPublish(len(j.rows)); err != nil {
				return err
			}
		}
		sctx, cancel := s.stmtCtx(dbCtx)
		version, err = s.writeCursor(sctx, conn, j.next, version)
		cancel()
		if err != nil {
			return err
		}
		// Counted once the cursor passed them: a batch published again
		// after a crash is counted then (as duplicates).
		for _, p := range j.outcomes {
			s.metrics.ingest(p.label, p.outcome)
		}
		s.ok()
		b.Reset()
	}
}

// stmtCtx bounds one statement of the owner.
func (s *TableSource) stmtCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.PublishTimeout+s.cfg.ShutdownTimeout)
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}

func (s *TableSource) ok() {
	s.started.Store(true)
	if s.lastErr.Load() != nil {
		s.lastErr.Store(nil)
		s.logger.Info("table source resumed")
	}
}

func (s *TableSource) logFailure(err error, wait time.Duration) {
	now := time.Now().UnixNano()
	if last := s.lastErrLog.Load(); now-last >= int64(10*time.Second) && s.lastErrLog.CompareAndSwap(last, now) {
		s.logger.Warn("table source: publishing failed; the cursor stays at the last batch acked and the rows after it are tried again (logged at most every 10s)",
			"retry_in", wait.String(), "error", err)
	}
}

// claimedRow is a row of a batch read.
type claimedRow struct {
	id        string
	kind      *string
	payload   *string
	createdAt time.Time
	txid      string // the cursor's order: (txid, id)
	// badCreatedAt is the reason, set instead of createdAt, for a
	// created_at an effect message cannot carry (CarriedCreatedAt).
	badCreatedAt string
}

// scanRows reads a batch: id, kind, payload, created_at, txid.
func scanRows(rows pgx.Rows, capacity int) ([]claimedRow, error) {
	defer rows.Close()
	batch := make([]claimedRow, 0, min(capacity, 64))
	for rows.Next() {
		var r claimedRow
		var createdAt pgtype.Timestamptz
		if err := rows.Scan(&r.id, &r.kind, &r.payload, &createdAt, &r.txid); err != nil {
			return nil, err
		}
		r.createdAt, r.badCreatedAt = CarriedCreatedAt(createdAt)
		batch = append(batch, r)
	}
	return batch, rows.Err()
}

// pending is a row whose publish is in flight.
type pending struct {
	id, label string
	row       *claimedRow // the row, when published message by message
	fut       jetstream.PubAckFuture
	rejected  bool   // the message is the row's failed completion
	outcome   string // once acked
}

// publishBatch publishes j's rows and waits for their acks (up to
// PublishTimeout), then closes j.done; j.err is set unless every row was
// acked.
func (s *TableSource) publishBatch(ctx context.Context, j *job) {
	defer close(j.done)
	start := time.Now()
	// The effects go as one fast batch where that may be; rest are the
	// rows it did not confirm and the rejected ones.
	fastDone, rest := s.publishFast(ctx, j.rows, start.Add(s.cfg.PublishTimeout))
	inFlight := make([]pending, 0, len(rest))
	var publishErr error
	for i, r := range rest {
		p, err := s.publishRow(r)
		if err != nil {
			s.metrics.publishError(publishErrorError)
			publishErr = err
			break // the batch is tried again after a backoff
		}
		p.row = &rest[i]
		inFlight = append(inFlight, p)
	}

	// After a fast batch that timed out, the rows published again still
	// get half the timeout.
	timer := time.NewTimer(max(s.cfg.PublishTimeout-time.Since(start), s.cfg.PublishTimeout/2))
	defer timer.Stop()
	outcomes := append(make([]pending, 0, len(j.rows)), fastDone...)
	for i := 0; i < len(inFlight); i++ { // grows with the rows failed for their size
		p := inFlight[i]
		select {
		case ack := <-p.fut.Ok():
			switch {
			case p.rejected:
				p.outcome = outcomeRejected
			case ack.Duplicate:
				p.outcome = outcomeDuplicate
			default:
				p.outcome = outcomePublished
			}
			outcomes = append(outcomes, p)
		case err := <-p.fut.Err():
			if !p.rejected && errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum) && publishErr == nil {
				// The stream will never take this message (its
				// max_msg_size): the row is failed with the reason,
				// or every row after it would wait behind it.
				rej, rerr := s.rejectTooLarge(*p.row, err)
				if rerr == nil {
					inFlight = append(inFlight, rej)
					continue
				}
				err = rerr
			}
			s.metrics.publishError(publishErrorError)
			if publishErr == nil {
				publishErr = fmt.Errorf("NATS: publish: %w", err)
			}
		case <-timer.C:
			s.metrics.publishError(publishErrorTimeout)
			if publishErr == nil {
				publishErr = fmt.Errorf("NATS: no ack within %s (EFFECTS_PUBLISH_TIMEOUT)", s.cfg.PublishTimeout)
			}
			// Expired: fire at once for every remaining future.
			timer.Reset(0)
		}
	}
	if len(outcomes) > 0 {
		s.metrics.publishSeconds.Observe(time.Since(start).Seconds())
	}
	j.outcomes, j.err = outcomes, publishErr
}

// publishRow publishes the effect of r, or, for a row that can never
// succeed, its failed completion.
func (s *TableSource) publishRow(r claimedRow) (pending, error) {
	msg, label, rejected, err := s.rowMsg(r)
	if err != nil {
		return pending{}, err
	}
	if rejected {
		return s.publishRejection(r.id, label, msg)
	}
	// A row has no trace to continue: each starts its own.
	span := startPublish("", msg, r.id, label)
	fut, err := s.js.PublishMsgAsync(msg)
	span.End()
	if errors.Is(err, nats.ErrMaxPayload) {
		rej, err := rejectionMsg(r, fmt.Sprintf(
			"the effect message is %d bytes, more than the NATS server accepts (max_payload %d)",
			len(msg.Data), s.js.Conn().MaxPayload()))
		if err != nil {
			return pending{}, err
		}
		return s.publishRejection(r.id, label, rej)
	}
	if err != nil {
		return pending{}, fmt.Errorf("NATS: publish: %w", err)
	}
	return pending{id: r.id, label: label, fut: fut}, nil
}

// rejectTooLarge publishes the failed completion of r, whose effect the
// effects stream refused as larger than its max_msg_size.
func (s *TableSource) rejectTooLarge(r claimedRow, refusal error) (pending, error) {
	_, label, _, _ := s.rowMsg(r)
	msg, err := rejectionMsg(r, fmt.Sprintf("the effect message is larger than the %s stream accepts (%v)", effects.EffectsStream, refusal))
	if err != nil {
		return pending{}, err
	}
	return s.publishRejection(r.id, label, msg)
}

// rowMsg is the message a claimed row becomes: its effect on
// effects.<kind>, or, when the row can never succeed (rejected), its failed
// completion. label is the row's kind label for the metrics.
func (s *TableSource) rowMsg(r claimedRow) (msg *nats.Msg, label string, rejected bool, err error) {
	if r.payload == nil || *r.payload == "null" {
		empty := string(emptyObject) // a handler always gets JSON
		r.payload = &empty
	}
	if label, reason := s.check(r); reason != "" {
		msg, err := rejectionMsg(r, reason)
		return msg, label, true, err
	}
	payload := []byte(*r.payload)
	kind := *r.kind
	data := appendEffect(make([]byte, 0, effectSize(r.id, kind, payload, nil)), r.id, kind, payload, r.createdAt, nil, time.Time{})
	return &nats.Msg{
		Subject: effects.Subject(kind),
		Data:    data,
		// The row id: a batch published again after a crash is stored once.
		Header: nats.Header{jetstream.MsgIDHeader: []string{r.id}},
	}, kind, false, nil
}

// check returns the reason a row can never succeed (and its metric label),
// or "" — the webhook's rules, and what only a table can hold: a created_at
// an effect message cannot carry, a payload column that is not JSON (a
// table made by hand with payload text).
func (s *TableSource) check(r claimedRow) (label, reason string) {
	if r.kind == nil {
		return invalidKindLabel, "kind is null"
	}
	if err := effects.ValidateKind(*r.kind); err != nil {
		detail := strings.TrimPrefix(err.Error(), effects.ErrInvalidKind.Error()+": ")
		return invalidKindLabel, fmt.Sprintf("kind %s is not valid: %s", quoteShort(*r.kind), detail)
	}
	if s.allowed != nil {
		if _, ok := s.allowed[*r.kind]; !ok {
			return *r.kind, fmt.Sprintf("kind %q is not handled here: EFFECTS_KINDS allows %s", *r.kind, allowedList(s.cfg.Kinds))
		}
	}
	if n := len(*r.payload); n > s.cfg.MaxPayloadBytes {
		return *r.kind, fmt.Sprintf("payload is %d bytes, the limit is %d (EFFECTS_MAX_PAYLOAD_BYTES)", n, s.cfg.MaxPayloadBytes)
	}
	if !json.Valid([]byte(*r.payload)) {
		return *r.kind, fmt.Sprintf("payload %s is not JSON", quoteShort(*r.payload))
	}
	if r.badCreatedAt != "" {
		return *r.kind, r.badCreatedAt
	}
	return "", ""
}

// rejectionMsg is the failed completion of r with reason. Its message id is
// that of a completion of the delivery whose event id is the row id.
func rejectionMsg(r claimedRow, reason string) (*nats.Msg, error) {
	kind := ""
	if r.kind != nil {
		kind = *r.kind
	}
	if len(kind) > maxStoredKindLength {
		kind = cutUTF8(kind, maxStoredKindLength)
	}
	comp := effects.Completion{
		EffectID:    r.id,
		Kind:        kind,
		Status:      effects.StatusFailed,
		Error:       &reason,
		CompletedAt: time.Now().UTC(),
	}
	data, err := json.Marshal(comp)
	if err != nil {
		return nil, fmt.Errorf("marshal a failed completion: %w", err)
	}
	msg := nats.NewMsg(effects.CompletedSubject(kind))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, effects.CompletionMsgID(effects.Ref{ID: r.id, Kind: kind, EventID: r.id}, effects.StatusFailed))
	return msg, nil
}

// publishRejection publishes msg, the failed completion of row id.
func (s *TableSource) publishRejection(id, label string, msg *nats.Msg) (pending, error) {
	fut, err := s.js.PublishMsgAsync(msg)
	if err != nil {
		return pending{}, fmt.Errorf("NATS: publish: %w", err)
	}
	s.logger.Debug("rejected an effect", "effect_id", id, "subject", msg.Subject)
	return pending{id: id, label: label, fut: fut, rejected: true}, nil
}
