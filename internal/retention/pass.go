// Package retention removes old rows in a final status from the effects
// table, as configured by EFFECTS_RETAIN_SUCCEEDED and EFFECTS_RETAIN_FAILED.
//
// The completer runs a [Remover]: a pass at start and then every
// EFFECTS_RETAIN_INTERVAL. A pass deletes, per status, the rows completed
// before the cutoff, oldest first, in batches of BatchSize rows. Each batch
// is one short transaction that locks only rows no one else holds (FOR
// UPDATE SKIP LOCKED), so it never waits on a completion being written, and
// a completion never waits longer than one batch. Every completer replica
// runs passes; a transaction-level advisory lock per batch keeps two of them
// from scanning the same rows at once (the one that finds it taken ends its
// pass). Pending rows are never removed.
//
// [Pass] is one pass without the service around it, for the `effects
// retention` command: with DryRun it only counts what a pass would remove.
package retention

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// Statuses a policy applies to, in the order a pass handles them.
var Statuses = []effects.Status{effects.StatusSucceeded, effects.StatusFailed, effects.StatusCancelled}

// lockKeyHigh is the high half of the advisory lock key of a table's
// retention batches ("effr"); the low half is the table's oid, so two tables
// in one database do not exclude each other.
const lockKeyHigh = int64(0x65666672) << 32

// ErrPassRunning is returned by [Pass] when another session (another
// completer replica, or the command) is removing rows from the table at
// this moment. Nothing is wrong; the other one does the work.
var ErrPassRunning = errors.New("another retention pass is running on this table")

// ErrGone is wrapped by the error of [Gone].
var ErrGone = errors.New("effect not in the table")

// Gone is the error for an effect id that has no row, e.g. when a re-run is
// asked for: it says that the row may have been removed by retention, and
// after how long, rather than only "not found".
func Gone(table, id string, p Policy) error {
	if !p.Enabled() {
		return fmt.Errorf("effect %s has no row in %s; retention removes nothing (%s), so the id is wrong or the row was deleted by hand: %w",
			id, table, p, ErrGone)
	}
	return fmt.Errorf("effect %s has no row in %s: it was removed by retention (%s) or never existed; it cannot be re-run, insert a new row instead: %w",
		id, table, p, ErrGone)
}

// Counts are rows by final status.
type Counts struct {
	Succeeded, Failed, Cancelled int64
}

// Of is the count of status.
func (c Counts) Of(s effects.Status) int64 { return *c.of(s) }

func (c *Counts) add(s effects.Status, n int64) { *c.of(s) += n }

func (c *Counts) of(s effects.Status) *int64 {
	switch s {
	case effects.StatusFailed:
		return &c.Failed
	case effects.StatusCancelled:
		return &c.Cancelled
	}
	return &c.Succeeded
}

// Total is the count of every status.
func (c Counts) Total() int64 { return c.Succeeded + c.Failed + c.Cancelled }

// PassOptions tune one [Pass].
type PassOptions struct {
	// BatchSize is the most rows one DELETE removes; 0 means
	// DefaultBatchSize.
	BatchSize int
	// DryRun counts the rows the pass would remove and removes nothing.
	DryRun bool
	// OnBatch, if set, is called after each committed batch.
	OnBatch func(status effects.Status, removed int64)
}

// PassResult is what a pass removed (or, on a dry run, would remove).
type PassResult struct {
	Removed Counts
	DryRun  bool
	// Cutoff is, per status, the time before which completed rows are
	// removed (the database's now() minus the retention); zero for a
	// status kept forever.
	Cutoff map[effects.Status]time.Time
}

// Conn is what a pass needs: *pgx.Conn, *pgxpool.Conn and *pgxpool.Pool
// have it. Every batch is a transaction of its own.
type Conn interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Pass removes, for each status with a retention, the rows of that status
// completed before now minus the retention, in batches. Pending rows are
// never touched. When ctx ends between batches, it returns what it removed
// so far with ctx's error. When another session is running a pass on the
// table, it returns what it removed so far with [ErrPassRunning].
func Pass(ctx context.Context, db Conn, table schema.Table, p Policy, o PassOptions) (PassResult, error) {
	if err := p.Validate(); err != nil {
		return PassResult{}, err
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	res := PassResult{DryRun: o.DryRun, Cutoff: map[effects.Status]time.Time{}}
	keep := map[effects.Status]time.Duration{effects.StatusSucceeded: p.Succeeded, effects.StatusFailed: p.Failed, effects.StatusCancelled: p.Cancelled}
	for _, status := range Statuses {
		if keep[status] <= 0 {
			continue
		}
		var cutoff time.Time
		if err := db.QueryRow(ctx, `SELECT now() - $1::int8 * interval '1 microsecond'`, keep[status].Microseconds()).Scan(&cutoff); err != nil {
			return res, fmt.Errorf("retention cutoff: %w", err)
		}
		res.Cutoff[status] = cutoff
		if o.DryRun {
			var n int64
			if err := db.QueryRow(ctx, fmt.Sprintf(countSQL, table.Quoted(), status), cutoff).Scan(&n); err != nil {
				return res, fmt.Errorf("count %s rows to remove: %w", status, err)
			}
			res.Removed.add(status, n)
			continue
		}
		del := fmt.Sprintf(deleteSQL, table.Quoted(), status)
		from := pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
		for {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			var n int64
			var err error
			n, from, err = removeBatch(ctx, db, table, del, cutoff, from, o.BatchSize)
			if err != nil {
				return res, fmt.Errorf("remove %s rows: %w", status, err)
			}
			res.Removed.add(status, n)
			if o.OnBatch != nil && n > 0 {
				o.OnBatch(status, n)
			}
			if n < int64(o.BatchSize) {
				break
			}
		}
	}
	return res, nil
}

// The status is part of the SQL text, not a parameter: PostgreSQL can use a
// partial index (WHERE status = 'succeeded') only when the plan knows the
// status, and a prepared statement's generic plan would not.
//
// created_at < cutoff narrows the scan of the partial index on created_at to
// old rows; the completed_at test is the rule itself (a row's completion is
// never before its creation, clocks allowing, so the first test removes
// nothing the second would keep). A failed row without completed_at (set by
// hand) goes by created_at.
const predicate = `status = '%[2]s' AND created_at < $1 AND (completed_at < $1 OR completed_at IS NULL)`

// deleteSQL removes one batch and returns how many rows it removed and the
// newest created_at among them. The subquery walks the status's partial
// index oldest first, from where the previous batch of the pass stopped
// ($3), and locks the rows it picks, skipping any that a completion is
// writing (a failed row being re-run); the DELETE then finds them by primary
// key.
//
// "= ANY(ARRAY(...))" rather than "IN (...)": with IN the planner joined the
// batch's ids to a sequential scan of the whole table (a hash semi join: 46ms
// per batch of 1000 on a table of 200k rows, growing with the table); the
// array makes it probe the primary key (5ms).
//
// Starting at the previous batch's newest created_at (>=, as rows may share
// one) skips the index entries of the rows already removed: they stay in
// the index until vacuum, and while any transaction is older than the
// removal (a long report, a replica's feedback) a scan from the start would
// read all of them again for every batch, making a pass quadratic in its
// length. Rows it leaves behind (locked, or completed too recently) are the
// next pass's.
const deleteSQL = `
WITH removed AS (
    DELETE FROM %[1]s
     WHERE id = ANY(ARRAY(
             SELECT id FROM %[1]s
              WHERE ` + predicate + ` AND created_at >= $3
              ORDER BY created_at
              LIMIT $2
              FOR UPDATE SKIP LOCKED))
    RETURNING created_at
)
SELECT count(*), max(created_at) FROM removed`

// oldestSQL is the age of the oldest row of a status, in seconds. A row
// created at 'infinity' or '-infinity' has no age (subtracting it fails the
// query: "cannot subtract infinite timestamps"); one created in a BC year
// has one longer than an int8 of microseconds or a time.Duration holds,
// capped by OldestAge.
const oldestSQL = `SELECT extract(epoch FROM now() - min(created_at))::float8 FROM %[1]s WHERE status = '%[2]s' AND isfinite(created_at)`

const countSQL = `SELECT count(*) FROM %[1]s WHERE ` + predicate

// removeBatch deletes up to limit rows created at or after from, in a
// transaction of its own holding the table's retention lock, and returns
// how many it removed and where the next batch starts.
func removeBatch(ctx context.Context, db Conn, table schema.Table, del string, cutoff time.Time, from pgtype.Timestamptz, limit int) (int64, pgtype.Timestamptz, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, from, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var locked bool
	err = tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1::int8 | $2::text::regclass::oid::int8)`, lockKeyHigh, table.Quoted()).Scan(&locked)
	if err != nil {
		return 0, from, err
	}
	if !locked {
		return 0, from, ErrPassRunning
	}
	var n int64
	var newest pgtype.Timestamptz
	if err := tx.QueryRow(ctx, del, cutoff, limit, from).Scan(&n, &newest); err != nil {
		return 0, from, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, from, err
	}
	if !newest.Valid {
		return n, from, nil
	}
	return n, newest, nil
}

// secondsToDuration is sec seconds to the microsecond, capped at the
// longest time.Duration (292 years) rather than wrapped around.
func secondsToDuration(sec float64) time.Duration {
	if sec >= float64(math.MaxInt64/int64(time.Second)) {
		return math.MaxInt64
	}
	return time.Duration(math.Round(sec*1e6)) * time.Microsecond
}

// OldestAge is, per final status, the age (by the database's clock) of the
// oldest row of that status in the table, by created_at; a status with no
// rows is absent, and rows created at 'infinity' or '-infinity' are left
// out. Each is one probe of the status's partial index.
func OldestAge(ctx context.Context, db Conn, table schema.Table) (map[effects.Status]time.Duration, error) {
	out := map[effects.Status]time.Duration{}
	for _, status := range Statuses {
		var sec *float64
		err := db.QueryRow(ctx, fmt.Sprintf(oldestSQL, table.Quoted(), status)).Scan(&sec)
		if err != nil {
			return nil, fmt.Errorf("oldest %s row: %w", status, err)
		}
		if sec != nil {
			out[status] = secondsToDuration(*sec)
		}
	}
	return out, nil
}
