// Package reconcile publishes again the effects whose rows stayed pending
// with nothing on its way to them: Hasura gave up while the ingest answered
// 503, a stream lost its data, an operator purged a stream.
//
// The rule (EFFECTS_RECONCILE_AFTER = A, default 15m, 0 off). A pass
// publishes a row again when all of these hold:
//   - the row is pending and was created more than A ago;
//   - it was not handed to JetStream in the last A: published_at (set by the
//     reconciler each time it publishes a row) is NULL or older than A, so a
//     row is re-published at most once per A;
//   - while a table source runs on the table, its cursor passed the row (a
//     row it has not published yet is its backlog, not lost);
//   - the completer's consumer has no completion waiting (not yet delivered
//     or not yet acknowledged): the row's completion may be one of them;
//   - the dispatcher consumer of the row's kind exists and has no message
//     waiting (num_pending + num_ack_pending = 0): while a kind has a
//     backlog or effects in flight, the row's effect may be among them, and
//     it is left alone however old it is. A slow system or a long backlog
//     is therefore never re-published; the price is that a lost row of a
//     kind that is never idle waits for a quiet moment of its kind (the
//     skipped metric shows it).
//
// The row is published with the ingest's own message builder, with
// Nats-Msg-Id "reconcile:<row id>:<n>", n being the row's previous
// published_at in Unix microseconds (0 when none): a pass that dies between
// the ack and the commit publishes again with the same id, which JetStream's
// duplicate window stores once, while each later re-publish is a delivery of
// its own (its completion gets its own message id). A row that can never be
// handled (no or invalid kind, message over the server's max_payload) gets a
// failed completion instead, as the ingest does.
//
// The completer runs a [Reconciler] in every replica. Each batch is one
// transaction that takes a transaction-level advisory lock of its own (the
// replica that finds it taken leaves the pass to the other), locks its
// rows FOR UPDATE SKIP LOCKED, and sets published_at after JetStream's ack.
// A table source publishes by a cursor, without locking rows: while one
// runs (it holds the table source lock), the reconciler takes only rows
// the cursor passed; while none runs, the batch holds that lock itself, so
// none starts until its commit, and a table source skips rows whose
// published_at is set.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// lockKeyHigh is the high half of the advisory lock key of a table's
// reconcile batches ("effc"); the low half is the table's oid.
const lockKeyHigh = int64(0x65666663) << 32

// ErrPassRunning is returned by a pass when another session is
// reconciling the table at this moment.
var ErrPassRunning = errors.New("another reconcile pass is running on this table")

// MsgIDPrefix starts the Nats-Msg-Id of every effect the reconciler
// publishes.
const MsgIDPrefix = "reconcile:"

// Reconciler runs reconcile passes on a schedule. Create it with [New] and
// run it with [Reconciler.Run] beside the completer.
type Reconciler struct {
	cfg    Config
	pool   *pgxpool.Pool
	js     jetstream.JetStream
	logger *slog.Logger
	m      *metrics
	table  schema.Table
	pub    rowPublisher

	claimSQL, markSQL string
}

// New returns a Reconciler for cfg reading the table through pool and
// publishing through js, with its metrics registered on reg. It does no I/O.
func New(cfg Config, pool *pgxpool.Pool, js jetstream.JetStream, logger *slog.Logger, reg prometheus.Registerer) (*Reconciler, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || js == nil || logger == nil || reg == nil {
		return nil, errors.New("reconcile: pool, js, logger and reg are required")
	}
	table, err := schema.ParseTable(cfg.Table)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("reconcile: register metrics: %w", err)
	}
	q := table.Quoted()
	logger = logger.With("component", "reconciler")
	return &Reconciler{
		cfg: cfg, pool: pool, js: js, logger: logger, m: m, table: table,
		pub: rowPublisher{js: js, kinds: m.kinds, logger: logger, who: "reconciler"},
		// The due partial index (migration 008) leads: a row is old from
		// when it was due (its run_at if it was scheduled, else its
		// created_at), so an effect waiting for its time is never taken for
		// a lost one, and the walk stops at the first row not due long
		// enough instead of reading past every waiting row. Kinds already
		// skipped in this pass ($3) are left out so the next batch moves on.
		// $4: no table source runs (this batch holds its lock), so every
		// row is a candidate; else only the rows its cursor passed: the
		// others are its backlog, which it publishes itself.
		claimSQL: `SELECT id::text, kind, payload::text, created_at, published_at, run_at FROM ` + q + ` e
			 WHERE status = 'pending'
			   AND GREATEST(created_at, run_at) < now() - $1::int8 * interval '1 microsecond'
			   AND (published_at IS NULL OR published_at < now() - $1::int8 * interval '1 microsecond')
			   AND (kind IS NULL OR kind <> ALL($3::text[]))
			   AND ($4::bool OR ` + ingest.PublishedSQL(table, "e") + `)
			 ORDER BY GREATEST(created_at, run_at)
			 LIMIT $2
			 FOR UPDATE SKIP LOCKED`,
		markSQL: `UPDATE ` + q + ` SET published_at = now() WHERE id = ANY($1::uuid[])`,
	}, nil
}

// Run runs a pass every Interval (the first after one Interval, so a
// completer starting after an outage first drains what waits for it) until
// ctx ends; it returns nil then. Turned off (After 0) it logs so and
// returns at once.
func (r *Reconciler) Run(ctx context.Context) error {
	if !r.cfg.Enabled() {
		r.logger.Info("reconciler off (EFFECTS_RECONCILE_AFTER=0)")
		return nil
	}
	r.logger.Info("reconciler running", "config", r.cfg)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		_, _ = r.RunPass(ctx)
	}
}

// PassResult is what one pass did, in rows.
type PassResult struct {
	Republished, Rejected int
	// Skipped is rows left alone, by reason.
	Skipped map[string]int
}

// RunPass runs one pass now, with metrics and logs. Another replica
// reconciling is not an error: it returns nil then.
func (r *Reconciler) RunPass(ctx context.Context) (PassResult, error) {
	res, err := r.pass(ctx)
	switch {
	case errors.Is(err, ErrPassRunning):
		r.m.passes.WithLabelValues(ResultSkipped).Inc()
		r.logger.Debug("reconcile pass left to another replica")
		return res, nil
	case err != nil && ctx.Err() != nil:
		return res, nil
	case err != nil:
		r.m.passes.WithLabelValues(ResultError).Inc()
		r.logger.Warn("reconcile pass failed; retrying at the next interval", "error", err,
			"republished", res.Republished, "next_in", r.cfg.Interval)
		return res, err
	}
	r.m.passes.WithLabelValues(ResultDone).Inc()
	if res.Republished > 0 || res.Rejected > 0 || len(res.Skipped) > 0 {
		r.logger.Info("reconcile pass", "republished", res.Republished, "rejected", res.Rejected,
			"skipped_backlog", res.Skipped[SkipBacklog], "skipped_no_consumer", res.Skipped[SkipNoConsumer],
			"skipped_completions_backlog", res.Skipped[SkipCompletions])
	}
	return res, nil
}

// kindState is whether a pass may publish rows of a kind, and why not.
type kindState struct{ skip string }

func (r *Reconciler) pass(ctx context.Context) (PassResult, error) {
	res := PassResult{Skipped: map[string]int{}}
	// One replica runs a whole pass: a session lock held on one connection
	// for the pass (its batches run on that connection, where the batch's
	// own transaction lock on the same key is re-entrant). With a lock per
	// batch only, two replicas interleaved, and the second saw the first's
	// fresh publishes as the kind's backlog and left the rest of the rows
	// for a later pass.
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("PostgreSQL: acquire: %w", err)
	}
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1::int8 | $2::text::regclass::oid::int8)`,
		lockKeyHigh, r.table.Quoted()).Scan(&locked); err != nil {
		conn.Release()
		return res, fmt.Errorf("PostgreSQL: lock: %w", err)
	}
	if !locked {
		conn.Release()
		return res, ErrPassRunning
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.PublishTimeout)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1::int8 | $2::text::regclass::oid::int8)`,
			lockKeyHigh, r.table.Quoted()); err != nil {
			// Never hand a connection that may still hold the lock back to
			// the pool: closing the session releases it.
			_ = conn.Hijack().Close(uctx)
			return
		}
		conn.Release()
	}()
	completionsBusy, err := r.consumerBusy(ctx, effects.CompletedStream, completer.ConsumerName)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return res, fmt.Errorf("NATS: completer consumer: %w", err)
	}
	kinds := map[string]kindState{}
	skippedKinds := []string{} // not nil: kind <> ALL(NULL) would match nothing
	for res.Republished+res.Rejected < r.cfg.MaxPerPass {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		limit := min(r.cfg.BatchSize, r.cfg.MaxPerPass-res.Republished-res.Rejected)
		n, err := r.batch(ctx, conn, limit, completionsBusy, kinds, &skippedKinds, &res)
		if err != nil {
			return res, err
		}
		if n < limit {
			break
		}
	}
	return res, nil
}

// consumerBusy reports whether a consumer has messages not yet delivered or
// not yet acknowledged.
func (r *Reconciler) consumerBusy(ctx context.Context, stream, name string) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	c, err := r.js.Consumer(cctx, stream, name)
	if err != nil {
		return false, err
	}
	info, err := c.Info(cctx)
	if err != nil {
		return false, err
	}
	return info.NumPending+uint64(info.NumAckPending) > 0, nil
}

// batch claims up to limit rows in a transaction holding the table's
// reconcile lock, publishes those it may, marks the acked ones and commits.
// It returns how many rows it claimed; the rows of a kind it skipped are
// left out of the pass's next batches.
func (r *Reconciler) batch(ctx context.Context, conn *pgxpool.Conn, limit int, completionsBusy bool, kinds map[string]kindState, skippedKinds *[]string, res *PassResult) (int, error) {
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*r.cfg.PublishTimeout)
	defer cancel()
	tx, err := conn.Begin(bctx)
	if err != nil {
		return 0, fmt.Errorf("PostgreSQL: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(bctx)) }()
	var locked bool
	if err := tx.QueryRow(bctx, `SELECT pg_try_advisory_xact_lock($1::int8 | $2::text::regclass::oid::int8)`,
		lockKeyHigh, r.table.Quoted()).Scan(&locked); err != nil {
		return 0, fmt.Errorf("PostgreSQL: lock: %w", err)
	}
	if !locked {
		return 0, ErrPassRunning
	}
	// A table source publishes the rows its cursor has not passed. While
	// none runs (its lock is free, and held by this batch until the commit,
	// so none starts meanwhile), every row is the reconciler's; a row it
	// publishes gets published_at, which a table source starting later
	// skips.
	var noSource bool
	if err := tx.QueryRow(bctx, `SELECT pg_try_advisory_xact_lock($1::int8 | $2::text::regclass::oid::int8)`,
		ingest.SourceLockKeyHigh, r.table.Quoted()).Scan(&noSource); err != nil {
		return 0, fmt.Errorf("PostgreSQL: lock: %w", err)
	}
	rows, err := tx.Query(bctx, r.claimSQL, r.cfg.After.Microseconds(), limit, *skippedKinds, noSource)
	if err != nil {
		return 0, fmt.Errorf("PostgreSQL: claim: %w", err)
	}
	var claimed []row
	for rows.Next() {
		var x row
		if err := rows.Scan(&x.id, &x.kind, &x.payload, &x.createdAt, &x.publishedAt, &x.runAt); err != nil {
			rows.Close()
			return 0, fmt.Errorf("PostgreSQL: claim: %w", err)
		}
		claimed = append(claimed, x)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("PostgreSQL: claim: %w", err)
	}

	var flights []inFlight
	for _, x := range claimed {
		if reason := x.unusable(); reason != "" {
			f, err := r.pub.reject(x, reason, msgID(x))
			if err != nil {
				return 0, err
			}
			flights = append(flights, f)
			continue
		}
		kind := *x.kind
		st, ok := kinds[kind]
		if !ok {
			st, err = r.kindState(bctx, kind, completionsBusy)
			if err != nil {
				return 0, err
			}
			kinds[kind] = st
			if st.skip != "" {
				*skippedKinds = append(*skippedKinds, kind)
				r.logger.Debug("reconciler: leaving old pending rows of a kind alone", "kind", kind, "reason", st.skip)
			}
		}
		if st.skip != "" {
			res.Skipped[st.skip]++
			r.m.skipped.WithLabelValues(r.m.kinds.Label(kind), st.skip).Inc()
			continue
		}
		f, err := r.pub.publish(x, msgID(x))
		if err != nil {
			return 0, err
		}
		flights = append(flights, f)
	}

	done, acked, publishErr := awaitAcks(flights, r.cfg.PublishTimeout)
	if len(acked) > 0 {
		if _, err := tx.Exec(bctx, r.markSQL, acked); err != nil {
			return 0, fmt.Errorf("PostgreSQL: mark published: %w", err)
		}
	}
	if err := tx.Commit(bctx); err != nil {
		return 0, fmt.Errorf("PostgreSQL: commit: %w", err)
	}
	for _, f := range done {
		if f.rejected {
			res.Rejected++
			r.m.rejected.WithLabelValues(f.label).Inc()
			continue
		}
		res.Republished++
		r.m.republished.WithLabelValues(f.label).Inc()
		r.logger.Info("reconciler: published a pending row again", "effect_id", f.row.id, "kind", *f.row.kind,
			"created_at", f.row.createdAt.Time, "msg_id", msgID(f.row))
	}
	if publishErr != nil {
		return 0, publishErr
	}
	return len(claimed), nil
}

func (r *Reconciler) kindState(ctx context.Context, kind string, completionsBusy bool) (kindState, error) {
	if completionsBusy {
		return kindState{skip: SkipCompletions}, nil
	}
	busy, err := r.consumerBusy(ctx, effects.EffectsStream, dispatcher.ConsumerName(kind))
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return kindState{skip: SkipNoConsumer}, nil
	case err != nil:
		return kindState{}, fmt.Errorf("NATS: consumer %s: %w", dispatcher.ConsumerName(kind), err)
	case busy:
		return kindState{skip: SkipBacklog}, nil
	}
	return kindState{}, nil
}

// msgID is the Nats-Msg-Id of the row's next re-publish.
func msgID(x row) string {
	n := int64(0)
	if x.publishedAt.Valid && x.publishedAt.InfinityModifier == pgtype.Finite {
		n = x.publishedAt.Time.UnixMicro()
	}
	return MsgIDPrefix + x.id + ":" + strconv.FormatInt(n, 10)
}
