package ingest

// The table source (EFFECTS_SOURCE=table): effects come straight from the
// effects table instead of Hasura's webhook.
//
// A worker claims a batch of unpublished rows in a transaction
// (SELECT ... FOR UPDATE SKIP LOCKED on the partial index of unpublished
// pending rows), publishes them asynchronously with Nats-Msg-Id = row id,
// waits for JetStream's acks, sets published_at on the acked rows and
// commits. Hence:
//   - no committed row is missed: the query asks for every row not yet
//     published, whenever it committed; there is no "highest id seen" cursor
//     that a long transaction committing late could fall behind;
//   - a rolled-back row was never visible, so it is never published;
//   - a row is marked only after its ack, in the transaction that holds its
//     lock: a crash at any moment rolls the claim back and the next claim
//     publishes the batch again, which JetStream's duplicate window stores
//     once (same message id);
//   - replicas (and workers) skip each other's locked rows, so they split
//     the work instead of publishing the same rows.
// LISTEN/NOTIFY (a statement trigger of migration 003) only wakes an idle
// worker early; a poll every EFFECTS_TABLE_POLL_INTERVAL is what guarantees
// that every row is found.

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

	claimSQL, markSQL, backlogSQL string

	// allowed is EFFECTS_KINDS as a set; nil allows every valid kind.
	allowed map[string]struct{}

	// wake has one channel per worker; a notification (or a reconnected
	// listener) sends to each without blocking.
	wake []chan struct{}

	// lastErr is the last failure of a batch, nil after a success: the
	// readiness check.
	lastErr atomic.Pointer[error]
	started atomic.Bool

	// lastErrLog keeps an outage from logging once per try.
	lastErrLog atomic.Int64
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
	q := t.Quoted()
	s := &TableSource{
		cfg: cfg, table: t, pool: pool, js: js, logger: logger, metrics: m, tm: tm,
		// The WHERE clause is the partial index's, so the claim reads only
		// the backlog; oldest first. Scheduled rows (run_at after
		// created_at) are the completer's scheduler's to publish.
		claimSQL: `SELECT id::text, kind, payload::text, created_at, ctid FROM ` + q +
			` WHERE ` + unpublishedRows + ` ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED`,
		// The claimed rows are found again by ctid (a TID scan), not by
		// id: the claim's row locks, held by this transaction, keep every
		// claimed row version where it is until the commit. The id test
		// (a hashed filter on the rows the TID scan returns) makes the
		// pair exact even where a ctid is not unique (a partitioned
		// table). The ctid array is behind a scalar subquery on purpose:
		// given the batch's 500 values as a constant (the first five runs
		// of a prepared statement are planned with its values), the
		// planner prices 500 TID fetches or primary-key probes above a
		// sequential scan of a table of 50,000 rows, and scanned the whole
		// table per batch; a subquery's array has no known length, and
		// the plan is the TID scan whatever the table's size
		// (docs/performance.md, "Plans that scanned the table").
		markSQL: `UPDATE ` + q + ` SET published_at = now() WHERE ctid = ANY(ARRAY(SELECT unnest($1::tid[]))) AND id = ANY($2::uuid[])`,
		backlogSQL: `SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM ` + q +
			` WHERE ` + unpublishedRows,
	}
	if len(cfg.Kinds) > 0 {
		s.allowed = make(map[string]struct{}, len(cfg.Kinds))
		for _, k := range cfg.Kinds {
			s.allowed[k] = struct{}{}
		}
	}
	s.fast = newFastPath(js, logger, !cfg.NoFastBatch)
	s.wake = make([]chan struct{}, cfg.Workers)
	for i := range s.wake {
		s.wake[i] = make(chan struct{}, 1)
	}
	return s, nil
}

// Ready is a readiness check: nil once a batch went through and the last
// one did not fail.
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
	var workers sync.WaitGroup
	for i := range s.cfg.Workers {
		workers.Go(func() { s.work(ctx, s.wake[i]) })
	}
	workers.Wait()
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

// work claims and publishes batches until ctx ends. A full batch is followed
// at once by the next; otherwise the worker waits for a notification or the
// poll interval. Failures back off.
func (s *TableSource) work(ctx context.Context, wake <-chan struct{}) {
	poll := time.NewTimer(s.cfg.PollInterval)
	defer poll.Stop()
	backoff := retry.Policy{Min: min(ensureBackoffMin, s.cfg.RetryMax), Max: s.cfg.RetryMax}.Backoff()
	for ctx.Err() == nil {
		n, err := s.batch(ctx)
		var wait time.Duration
		switch {
		case err != nil:
			s.lastErr.Store(&err)
			wait = backoff.Next()
			s.logFailure(err, wait)
			s.tm.errors.Inc()
		case n == s.cfg.BatchSize:
			backoff.Reset()
			s.ok()
			continue
		default:
			backoff.Reset()
			s.ok()
			wait = s.cfg.PollInterval
		}
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
		poll.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
		case <-wake:
			if err != nil {
				// A notification does not end an outage's backoff.
				select {
				case <-ctx.Done():
					return
				case <-poll.C:
				}
			}
		}
	}
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
		s.logger.Warn("table source: a batch failed; its rows stay unpublished and are tried again (logged at most every 10s)",
			"retry_in", wait.String(), "error", err)
	}
}

// claimedRow is a row of a claimed batch.
type claimedRow struct {
	id        string
	kind      *string
	payload   *string
	createdAt time.Time
	ctid      pgtype.TID // where the claimed version is, for the mark
	// badCreatedAt is the reason, set instead of createdAt, for a
	// created_at an effect message cannot carry (CarriedCreatedAt).
	badCreatedAt string
}

// pending is a row whose publish is in flight.
type pending struct {
	id, label string
	ctid      pgtype.TID
	fut       jetstream.PubAckFuture
	rejected  bool   // the message is the row's failed completion
	outcome   string // once acked
}

// batch claims up to BatchSize rows, publishes them, marks the acked ones and
// commits. It returns how many rows it claimed. It is not cut short by ctx:
// once claimed, a batch is published and marked (or rolled back) within
// PublishTimeout plus a statement, so a stop republishes nothing.
func (s *TableSource) batch(ctx context.Context) (int, error) {
	if nc := s.js.Conn(); nc != nil && !nc.IsConnected() {
		return 0, fmt.Errorf("NATS: %w", errNotConnected)
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.PublishTimeout+s.cfg.ShutdownTimeout)
	defer cancel()
	tx, err := s.pool.Begin(bctx)
	if err != nil {
		return 0, fmt.Errorf("PostgreSQL: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(bctx)) }()

	rows, err := tx.Query(bctx, s.claimSQL, s.cfg.BatchSize)
	if err != nil {
		return 0, fmt.Errorf("PostgreSQL: claim: %w", err)
	}
	claimed := make([]claimedRow, 0, 64)
	for rows.Next() {
		var r claimedRow
		var createdAt pgtype.Timestamptz
		if err := rows.Scan(&r.id, &r.kind, &r.payload, &createdAt, &r.ctid); err != nil {
			rows.Close()
			return 0, fmt.Errorf("PostgreSQL: claim: %w", err)
		}
		r.createdAt, r.badCreatedAt = CarriedCreatedAt(createdAt)
		claimed = append(claimed, r)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("PostgreSQL: claim: %w", err)
	}
	if len(claimed) == 0 {
		if err := tx.Commit(bctx); err != nil {
			return 0, fmt.Errorf("PostgreSQL: commit: %w", err)
		}
		return 0, nil
	}
	s.tm.batchSize.Observe(float64(len(claimed)))

	start := time.Now()
	// The effects go as one fast batch where that may be; rest are the
	// rows it did not confirm and the rejected ones.
	fastDone, rest := s.publishFast(ctx, claimed, start.Add(s.cfg.PublishTimeout))
	inFlight := make([]pending, 0, len(rest))
	var publishErr error
	for _, r := range rest {
		p, err := s.publishRow(r)
		if err != nil {
			s.metrics.publishError(publishErrorError)
			publishErr = err
			break // the rest stay unpublished; tried again after a backoff
		}
		p.ctid = r.ctid
		inFlight = append(inFlight, p)
	}

	// After a fast batch that timed out, the rows published again still
	// get half the timeout.
	timer := time.NewTimer(max(s.cfg.PublishTimeout-time.Since(start), s.cfg.PublishTimeout/2))
	defer timer.Stop()
	acked := make([]string, 0, len(claimed))
	ackedAt := make([]pgtype.TID, 0, len(claimed))
	outcomes := make([]pending, 0, len(claimed))
	for _, p := range fastDone {
		acked, ackedAt, outcomes = append(acked, p.id), append(ackedAt, p.ctid), append(outcomes, p)
	}
	for _, p := range inFlight {
		select {
		case ack := <-p.fut.Ok():
			acked = append(acked, p.id)
			ackedAt = append(ackedAt, p.ctid)
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
	if len(acked) > 0 {
		s.metrics.publishSeconds.Observe(time.Since(start).Seconds())
		tag, err := tx.Exec(bctx, s.markSQL, ackedAt, acked)
		if err != nil {
			return 0, fmt.Errorf("PostgreSQL: mark published: %w", err)
		}
		if n := tag.RowsAffected(); n != int64(len(acked)) {
			// Cannot happen while the claim's locks hold; should it, the
			// batch is rolled back and published again (stored once).
			return 0, fmt.Errorf("PostgreSQL: mark published: %d of %d rows found", n, len(acked))
		}
		if err := tx.Commit(bctx); err != nil {
			return 0, fmt.Errorf("PostgreSQL: commit: %w", err)
		}
		// Counted once marked: a batch rolled back is published again and
		// counted then (as duplicates).
		for _, p := range outcomes {
			s.metrics.ingest(p.label, p.outcome)
		}
	}
	if publishErr != nil {
		return 0, publishErr
	}
	return len(claimed), nil
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
