package ingest

// The table source's cursor (migration 006): which rows of the effects
// table are published, kept as PostgreSQL snapshots instead of a mark on
// each row.
//
// Every row carries txid, the id of the transaction that inserted it. A
// snapshot (pg_current_snapshot(): xmin, xmax and the ids running between)
// says which transactions had finished when it was taken; every row of a
// finished transaction is visible at once, and a transaction running then
// can only finish later. So "every row of every transaction visible in
// snapshot B is published" is a complete description of what was published,
// whatever order the transactions committed in, and the next rows to
// publish are those of the transactions visible in a newer snapshot T and
// not in B: the ids B saw running (its xip) and those from B's xmax on.
// A transaction open for an hour stays in the xip of every snapshot taken
// meanwhile and delays nothing but its own rows; when it commits, the next
// pass finds them among B's xip.
//
// A pass from B to T is read in batches in (txid, id) order, so one
// transaction of 20,000 rows is many batches; while a pass is part done the
// cursor also holds T and the last (txid, id) published. It is written
// after each batch's acks, once per batch: a crash republishes at most the
// batches in flight (stored once: message id = row id).
//
// One ingest publishes at a time: the one holding the table source's
// advisory lock (a session lock on a connection of its own, on which it
// also reads and writes the cursor). The others wait in pg_advisory_lock
// and take over as soon as the owner's session ends (a stop, a crash, a
// lost connection). The cursor write also checks the version it read, so
// two writers could never interleave even if the lock were lost unnoticed.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/schema"
)

// SourceLockKeyHigh is the high half of the advisory lock key held by the
// ingest that publishes a table ("effs"); the low half is the table's oid.
// The reconciler takes it too, for a batch, to know no table source runs.
const SourceLockKeyHigh = int64(0x65666673) << 32

// cursorName is the table source's row in the cursor table.
const cursorName = "table_source"

// snapshot is a pg_snapshot: transactions below xmin have finished, those
// from xmax on had not started, and xip lists those between that were
// running. Ids are xid8 values in decimal, as PostgreSQL prints them.
type snapshot struct {
	xmin, xmax string
	xip        []string // never nil: `<> ALL(NULL)` would match nothing
}

// zeroSnapshot sees no transaction: a cursor at it publishes every row.
var zeroSnapshot = snapshot{xmin: "1", xmax: "1", xip: []string{}}

// parseSnapshot reads pg_snapshot's text form "xmin:xmax:xip,xip,...".
func parseSnapshot(s string) (snapshot, error) {
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return snapshot{}, fmt.Errorf("not a pg_snapshot: %q", s)
	}
	sn := snapshot{xmin: parts[0], xmax: parts[1], xip: []string{}}
	if parts[2] != "" {
		sn.xip = strings.Split(parts[2], ",")
	}
	return sn, nil
}

func (s snapshot) String() string {
	return s.xmin + ":" + s.xmax + ":" + strings.Join(s.xip, ",")
}

// rowKey is a row's place in the cursor's order.
type rowKey struct{ txid, id string }

// firstKey sorts before every row.
var firstKey = rowKey{txid: "0", id: "00000000-0000-0000-0000-000000000000"}

// cursorPos is a position of the cursor: every row of a transaction
// visible in base is published, and, while a pass to target is part done
// (target non-nil), every row of a transaction visible in target up to
// after in (txid, id) order.
type cursorPos struct {
	base   snapshot
	target *snapshot
	after  rowKey
}

// cursorSQL are the table source's statements on its cursor.
type cursorSQL struct {
	// read: the next batch of a pass, after the last key read (txid a,
	// id b). Three index scans on the partial (txid, id) index, each
	// bounded by plain keys (a row comparison beside a plain bound made
	// PostgreSQL 15 start the scan at the lower of the two, from the
	// start of the index): the rest of transaction a ($1, $2), the
	// transactions base saw running that are after a and finished in
	// target ($3), and the transactions from $4 (base's xmax, or a+1
	// when past it) to target's xmax ($5) less those target saw running
	// ($6). $7 is the batch size. What the read returns from transaction
	// a sorts first, then the rest in (txid, id) order.
	read string
	// load makes the cursor row when missing and reads it; get only
	// reads it.
	load, get string
	// write moves the cursor if it is still at version $6.
	write string
	// lock waits for and takes the table source's advisory lock.
	lock string
	// backlog counts the rows not yet published, and the oldest one's age.
	backlog string
}

func newCursorSQL(t schema.Table) cursorSQL {
	q := t.Quoted()
	c := t.CursorTable().Quoted()
	cols := `id, kind, payload, created_at, txid`
	// The predicate of the partial index, word for word, so the planner
	// uses it.
	pred := cursorRows
	branch := func(where string) string {
		return `(SELECT ` + cols + ` FROM ` + q + ` WHERE ` + where + ` AND ` + pred + ` ORDER BY txid, id LIMIT $7)`
	}
	return cursorSQL{
		// Ordered by the subquery's columns (r.txid), not the output's
		// text (txid::text): "10" sorts before "9".
		read: `SELECT r.id::text, r.kind, r.payload::text, r.created_at, r.txid::text FROM (` +
			branch(`txid = $1::xid8 AND id > $2::uuid`) + ` UNION ALL ` +
			branch(`txid = ANY($3::xid8[])`) + ` UNION ALL ` +
			branch(`txid >= $4::xid8 AND txid < $5::xid8 AND txid <> ALL($6::xid8[])`) +
			`) r ORDER BY r.txid, r.id LIMIT $7`,
		load: `WITH made AS (INSERT INTO ` + c + ` (name, base) VALUES ($1, '` + zeroSnapshot.String() + `')
			ON CONFLICT (name) DO NOTHING RETURNING base::text, target::text, after_txid::text, after_id::text, version)
			SELECT * FROM made UNION ALL
			SELECT base::text, target::text, after_txid::text, after_id::text, version FROM ` + c + ` WHERE name = $1`,
		get: `SELECT base::text, target::text, after_txid::text, after_id::text, version FROM ` + c + ` WHERE name = $1`,
		write: `UPDATE ` + c + ` SET base = $2::pg_snapshot, target = $3::pg_snapshot, after_txid = $4::xid8, after_id = $5::uuid,
			version = version + 1, updated_at = now() WHERE name = $1 AND version = $6`,
		lock: `SELECT pg_advisory_lock($1::int8 | $2::text::regclass::oid::int8)`,
		backlog: `SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM (
			SELECT created_at, txid, id FROM ` + q + ` WHERE txid = ANY($1::xid8[]) AND ` + pred + `
			UNION ALL
			SELECT created_at, txid, id FROM ` + q + ` WHERE txid >= $2::xid8 AND ` + pred + `) r
			WHERE NOT coalesce(pg_visible_in_snapshot(txid, $3::pg_snapshot) AND (txid, id) <= ($4::xid8, $5::uuid), false)`,
	}
}

// PublishedSQL is a condition, for a row of t whose columns are named by
// alias (e.g. "e" for e.txid, e.id), that holds when the table source has
// published the row (its cursor passed it). It is false for every row
// while no table source has run on t.
func PublishedSQL(t schema.Table, alias string) string {
	return `EXISTS (SELECT 1 FROM ` + t.CursorTable().Quoted() + ` c WHERE c.name = '` + cursorName + `' AND (
		pg_visible_in_snapshot(` + alias + `.txid, c.base) OR (c.target IS NOT NULL AND pg_visible_in_snapshot(` + alias + `.txid, c.target)
		AND (` + alias + `.txid, ` + alias + `.id) <= (c.after_txid, c.after_id))))`
}

// loadCursor reads the cursor and its version. With create, it makes the
// cursor at the zero snapshot the first time a table source runs; without,
// a missing cursor reads as the zero snapshot.
func (s *TableSource) loadCursor(ctx context.Context, conn *pgx.Conn, create bool) (cursorPos, int64, error) {
	var base string
	var target, afterTxid, afterID *string
	var version int64
	q := s.sql.get
	if create {
		q = s.sql.load
	}
	err := conn.QueryRow(ctx, q, cursorName).Scan(&base, &target, &afterTxid, &afterID, &version)
	if !create && errors.Is(err, pgx.ErrNoRows) {
		return cursorPos{base: zeroSnapshot}, 0, nil
	}
	if err != nil {
		return cursorPos{}, 0, fmt.Errorf("PostgreSQL: read the cursor: %w", err)
	}
	var pos cursorPos
	if pos.base, err = parseSnapshot(base); err != nil {
		return cursorPos{}, 0, fmt.Errorf("the cursor in %s: %w", s.table.CursorTable(), err)
	}
	if target != nil {
		t, err := parseSnapshot(*target)
		if err != nil || afterTxid == nil || afterID == nil {
			return cursorPos{}, 0, fmt.Errorf("the cursor in %s: a part-done pass without its position (target %q)", s.table.CursorTable(), *target)
		}
		pos.target = &t
		pos.after = rowKey{txid: *afterTxid, id: *afterID}
	}
	return pos, version, nil
}

// writeCursor moves the cursor from version to pos and returns the new
// version. Finding another version means another writer moved it: this
// source is not the owner any more.
func (s *TableSource) writeCursor(ctx context.Context, conn *pgx.Conn, pos cursorPos, version int64) (int64, error) {
	var target, afterTxid, afterID any
	if pos.target != nil {
		target, afterTxid, afterID = pos.target.String(), pos.after.txid, pos.after.id
	}
	tag, err := conn.Exec(ctx, s.sql.write, cursorName, pos.base.String(), target, afterTxid, afterID, version)
	if err != nil {
		return version, fmt.Errorf("PostgreSQL: write the cursor: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return version, errCursorMoved
	}
	return version + 1, nil
}

// checkCursor refuses a cursor ahead of the server's transaction ids: it
// came from another cluster (a dump restored elsewhere), and every row
// inserted here would read as published.
func (s *TableSource) checkCursor(ctx context.Context, conn *pgx.Conn, pos cursorPos) error {
	var ahead bool
	err := conn.QueryRow(ctx, `SELECT $1::xid8 > pg_snapshot_xmax(pg_current_snapshot())`, pos.base.xmax).Scan(&ahead)
	if err != nil {
		return fmt.Errorf("PostgreSQL: check the cursor: %w", err)
	}
	if ahead {
		return fmt.Errorf("the cursor in %s (%s) is ahead of this server's transaction ids: the table was restored from "+
			"another PostgreSQL? Rows inserted here would never be published; see the README (\"The table\") to reset it",
			s.table.CursorTable(), pos.base)
	}
	return nil
}

// errCursorMoved: another writer moved the cursor (never while the advisory
// lock is held; the check is the last line of defence).
var errCursorMoved = errors.New("the cursor was moved by another table source")

// readBatch reads the next batch after pos, starting a pass (taking the
// current snapshot as its target) when none is under way. It returns the
// rows and the position after them.
func (s *TableSource) readBatch(ctx context.Context, conn *pgx.Conn, pos cursorPos) ([]claimedRow, cursorPos, error) {
	if pos.target == nil {
		var t string
		if err := conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&t); err != nil {
			return nil, pos, fmt.Errorf("PostgreSQL: snapshot: %w", err)
		}
		target, err := parseSnapshot(t)
		if err != nil {
			return nil, pos, err
		}
		pos.target, pos.after = &target, firstKey
	}
	args, err := readArgs(pos, s.cfg.BatchSize)
	if err != nil {
		return nil, pos, err
	}
	rows, err := conn.Query(ctx, s.sql.read, args...)
	if err != nil {
		return nil, pos, fmt.Errorf("PostgreSQL: read: %w", err)
	}
	batch, err := scanRows(rows, s.cfg.BatchSize)
	if err != nil {
		return nil, pos, fmt.Errorf("PostgreSQL: read: %w", err)
	}
	if len(batch) == s.cfg.BatchSize {
		last := batch[len(batch)-1]
		pos.after = rowKey{txid: last.txid, id: last.id}
		return batch, pos, nil
	}
	// The pass is done: every row of target's transactions is read.
	return batch, cursorPos{base: *pos.target}, nil
}

// readArgs are the read statement's arguments for the batch after pos,
// whose target is set.
func readArgs(pos cursorPos, batch int) ([]any, error) {
	a, err := strconv.ParseUint(pos.after.txid, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("the cursor's last key %q: %w", pos.after.txid, err)
	}
	baseXmax, err := strconv.ParseUint(pos.base.xmax, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("the cursor's xmax %q: %w", pos.base.xmax, err)
	}
	// base's running transactions after a, finished in target.
	running := make(map[string]bool, len(pos.target.xip))
	for _, x := range pos.target.xip {
		running[x] = true
	}
	xip := []string{}
	for _, x := range pos.base.xip {
		n, err := strconv.ParseUint(x, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("the cursor's xip %q: %w", x, err)
		}
		if n > a && !running[x] {
			xip = append(xip, x)
		}
	}
	from := strconv.FormatUint(max(baseXmax, a+1), 10)
	// At a pass's start there is no transaction to go on with (not txid 0:
	// the rows from before migration 006 read 0).
	var rest any = pos.after.txid
	if pos.after == firstKey {
		rest = nil
	}
	return []any{rest, pos.after.id, xip, from, pos.target.xmax, pos.target.xip, batch}, nil
}

// backlog counts the rows the durable cursor has not passed, and the age
// of the oldest.
func (s *TableSource) backlog(ctx context.Context) (n int64, age float64, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Release()
	pos, _, err := s.loadCursor(ctx, conn.Conn(), false)
	if err != nil {
		return 0, 0, err
	}
	target, after := any(nil), firstKey
	if pos.target != nil {
		target, after = pos.target.String(), pos.after
	}
	err = conn.QueryRow(ctx, s.sql.backlog, pos.base.xip, pos.base.xmax, target, after.txid, after.id).Scan(&n, &age)
	return n, age, err
}
