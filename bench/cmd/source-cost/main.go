// Command source-cost measures what PostgreSQL spends to hand the rows of an
// effects table to a publisher, for three designs of the table source:
//
//   - claim: SELECT ... FOR UPDATE SKIP LOCKED on the unpublished partial
//     index, then UPDATE published_at (the table source before migration
//     006);
//   - cursor: a commit-ordered cursor on a transaction-id column (xid8,
//     pg_current_xact_id()), read in keyset order on (txid, id) between two
//     snapshots, the cursor written once per batch (migration 006);
//   - logical: logical decoding of the inserts (pgoutput, a publication for
//     INSERT only, a replication slot read with pglogrepl).
//
// Each round makes a fresh table, inserts N rows by COPY in batches, hands
// them all over in batches (the design's reads and writes, no NATS), then
// completes them with the completer's batched UPDATE. It reports, per row,
// the CPU time of the PostgreSQL processes doing each step (backend or
// walsender, from /proc/<pid>/schedstat: run the tool on the database's
// machine), the WAL written by each step, the table's heap and total size
// after the run, and the latency from an insert's commit to the publisher
// reading it at a trickle of single-row inserts. The designs run
// alternately, round after round, so a machine shared with other work
// loads them alike; compare within one run.
//
// The logical design needs wal_level=logical, e.g. a private server:
//
//	initdb -D DIR -U postgres -A trust && pg_ctl -D DIR -o '-p 55432 -c wal_level=logical -c autovacuum=off' start
//	go run ./cmd/source-cost -db 'postgres://postgres@127.0.0.1:55432/postgres'
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func main() {
	db := flag.String("db", "postgres://postgres@127.0.0.1:55432/postgres?sslmode=disable", "PostgreSQL URL (a superuser; wal_level=logical for the logical design)")
	n := flag.Int("rows", 50000, "rows per round")
	batch := flag.Int("batch", 500, "rows per insert, hand-over and completion batch")
	rounds := flag.Int("rounds", 3, "rounds of each design, alternated")
	designs := flag.String("designs", "claim,cursor,logical", "designs to measure")
	trickle := flag.Int("trickle", 1000, "single-row inserts for the latency measurement (at -rate a second)")
	rate := flag.Int("rate", 500, "inserts a second for the latency measurement")
	flag.Parse()
	ctx := context.Background()
	results := map[string][]result{}
	names := strings.Split(*designs, ",")
	for r := range *rounds {
		for _, d := range names {
			res, err := run(ctx, *db, d, *n, *batch, *trickle, *rate)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s round %d: %v\n", d, r+1, err)
				os.Exit(1)
			}
			fmt.Printf("round %d %-8s %s\n", r+1, d, res)
			results[d] = append(results[d], res)
		}
	}
	fmt.Printf("\nmedians of %d rounds, %d rows, batches of %d:\n", *rounds, *n, *batch)
	fmt.Println("| design | insert CPU µs/row | hand-over CPU µs/row | completion CPU µs/row | insert WAL B/row | hand-over WAL B/row | completion WAL B/row | heap MB | heap+indexes MB | latency p50 / p99 ms |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, d := range names {
		rs := results[d]
		med := func(f func(result) float64) float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			slices.Sort(v)
			return v[len(v)/2]
		}
		fmt.Printf("| %s | %.1f | %.1f | %.1f | %.0f | %.0f | %.0f | %.1f | %.1f | %.1f / %.1f |\n", d,
			med(func(r result) float64 { return r.insertCPU }), med(func(r result) float64 { return r.handCPU }),
			med(func(r result) float64 { return r.completeCPU }),
			med(func(r result) float64 { return r.insertWAL }), med(func(r result) float64 { return r.handWAL }),
			med(func(r result) float64 { return r.completeWAL }),
			med(func(r result) float64 { return r.heapMB }), med(func(r result) float64 { return r.totalMB }),
			med(func(r result) float64 { return r.p50 }), med(func(r result) float64 { return r.p99 }))
	}
}

type result struct {
	insertCPU, handCPU, completeCPU float64 // µs per row
	insertWAL, handWAL, completeWAL float64 // bytes per row
	heapMB, totalMB                 float64
	p50, p99                        float64 // ms
}

func (r result) String() string {
	return fmt.Sprintf("cpu µs/row insert %.1f hand-over %.1f completion %.1f; wal B/row %.0f %.0f %.0f; heap %.1f MB total %.1f MB; latency p50 %.1f ms p99 %.1f ms",
		r.insertCPU, r.handCPU, r.completeCPU, r.insertWAL, r.handWAL, r.completeWAL, r.heapMB, r.totalMB, r.p50, r.p99)
}

// The effects table as migrations 001-004 make it, less what the design adds.
const tableDDL = `
CREATE TABLE effects (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL DEFAULT 'pending',
    attempts     int         NOT NULL DEFAULT 0,
    completed_at timestamptz,
    completion   jsonb,
    error        text,
    rerun_requested_at timestamptz,
    rerun_requested_by text,
    CONSTRAINT effects_status_check CHECK (status IN ('pending', 'succeeded', 'failed'))
);
CREATE INDEX effects_pending_idx ON effects (created_at) WHERE status = 'pending';
CREATE INDEX effects_failed_idx ON effects (created_at) WHERE status = 'failed';
CREATE INDEX effects_succeeded_idx ON effects (created_at) WHERE status = 'succeeded';
CREATE OR REPLACE FUNCTION effects_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify(TG_ARGV[0], ''); RETURN NULL; END $$;
`

const notifyDDL = `CREATE TRIGGER effects_notify AFTER INSERT ON effects FOR EACH STATEMENT EXECUTE FUNCTION effects_notify('effects_inserted');`

var designDDL = map[string]string{
	"claim": `ALTER TABLE effects ADD COLUMN published_at timestamptz;
CREATE INDEX effects_unpub_idx ON effects (created_at) WHERE published_at IS NULL AND status = 'pending';` + notifyDDL,
	"cursor": `ALTER TABLE effects ADD COLUMN published_at timestamptz;
ALTER TABLE effects ADD COLUMN txid xid8 NOT NULL DEFAULT '0';
ALTER TABLE effects ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX effects_txid_idx ON effects (txid, id) WHERE status = 'pending' AND published_at IS NULL;
CREATE TABLE effects_cursor (name text PRIMARY KEY, base pg_snapshot NOT NULL, target pg_snapshot,
    after_txid xid8, after_id uuid, version bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now());
INSERT INTO effects_cursor (name, base) VALUES ('table_source', '1:1:');` + notifyDDL,
	"logical": `CREATE PUBLICATION effects_pub FOR TABLE effects WITH (publish = 'insert');`,
}

func run(ctx context.Context, url, design string, n, batch, trickle, rate int) (result, error) {
	var res result
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		return res, err
	}
	defer admin.Close(ctx)
	_, _ = admin.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'effects_slot'`)
	if _, err := admin.Exec(ctx, `DROP TABLE IF EXISTS effects, effects_cursor CASCADE; DROP PUBLICATION IF EXISTS effects_pub; DROP FUNCTION IF EXISTS effects_notify CASCADE;`); err != nil {
		return res, err
	}
	if _, err := admin.Exec(ctx, tableDDL+designDDL[design]); err != nil {
		return res, err
	}
	if _, err := admin.Exec(ctx, `CHECKPOINT`); err != nil {
		return res, err
	}
	h, err := newHandover(ctx, url, design, batch)
	if err != nil {
		return res, err
	}
	defer h.close(ctx)

	ins, err := pgx.Connect(ctx, url)
	if err != nil {
		return res, err
	}
	defer ins.Close(ctx)
	insPid := pid(ctx, ins)

	// Insert: COPY in batches, one transaction each.
	wal0, cpuIns0, cpuH0 := lsn(ctx, admin), cpu(insPid), h.cpu(ctx)
	for i := 0; i < n; i += batch {
		rows := make([][]any, 0, batch)
		for j := i; j < min(i+batch, n); j++ {
			rows = append(rows, []any{"echo", fmt.Sprintf(`{"to": "user%d@example.com", "subject": "hello", "n": %d}`, j, j)})
		}
		if _, err := ins.CopyFrom(ctx, pgx.Identifier{"effects"}, []string{"kind", "payload"}, pgx.CopyFromRows(rows)); err != nil {
			return res, err
		}
	}
	wal1 := lsn(ctx, admin)
	res.insertCPU = us(cpu(insPid)-cpuIns0, n)
	// Hand-over (the logical reader decodes while the inserts run, so its
	// CPU counts from the start of the inserts).
	ids, err := h.drain(ctx, n)
	if err != nil {
		return res, err
	}
	wal2 := lsn(ctx, admin)
	res.handCPU = us(h.cpu(ctx)-cpuH0, n)
	res.insertWAL = float64(wal1-wal0) / float64(n)
	res.handWAL = float64(wal2-wal1) / float64(n)

	// Completion: the completer's batched UPDATE (a logical reader goes on
	// decoding these records, which is part of its cost).
	cpuIns0, cpuH0 = cpu(insPid), h.cpu(ctx)
	for i := 0; i < len(ids); i += batch {
		if _, err := ins.Exec(ctx, `UPDATE effects SET status = 'succeeded', attempts = 1, completed_at = now(),
			completion = '{"ok": true}' WHERE id = ANY($1::uuid[]) AND status = 'pending'`, ids[i:min(i+batch, len(ids))]); err != nil {
			return res, err
		}
	}
	if design == "logical" {
		if err := h.catchUp(ctx, lsn(ctx, admin)); err != nil {
			return res, err
		}
		res.handCPU += us(h.cpu(ctx)-cpuH0, n)
	}
	wal3 := lsn(ctx, admin)
	res.completeCPU = us(cpu(insPid)-cpuIns0, n)
	res.completeWAL = float64(wal3-wal2) / float64(n)
	if err := admin.QueryRow(ctx, `SELECT pg_relation_size('effects') / 1048576.0, pg_total_relation_size('effects') / 1048576.0`).Scan(&res.heapMB, &res.totalMB); err != nil {
		return res, err
	}

	// Latency at a trickle of single-row inserts.
	lat, err := h.latency(ctx, ins, trickle, rate)
	if err != nil {
		return res, err
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		res.p50 = lat[len(lat)/2]
		res.p99 = lat[len(lat)*99/100]
	}
	return res, nil
}

func us(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) }

func lsn(ctx context.Context, c *pgx.Conn) int64 {
	var s string
	if err := c.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
		panic(err)
	}
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		panic(err)
	}
	return int64(l)
}

func pid(ctx context.Context, c *pgx.Conn) int {
	var p int
	if err := c.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&p); err != nil {
		panic(err)
	}
	return p
}

// cpu is the time process pid has run, from /proc/<pid>/schedstat.
func cpu(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		panic(err)
	}
	ns, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
	if err != nil {
		panic(err)
	}
	return time.Duration(ns)
}

// handover is one design's publisher side, without NATS.
type handover struct {
	design string
	batch  int
	conn   *pgx.Conn      // claim, cursor: the reading connection
	repl   *pgconn.PgConn // logical: the replication connection
	pid    int
	ack    pglogrepl.LSN

	// cursor state
	base, target snapshot
	afterTxid    string
	afterID      string
	version      int64
}

func newHandover(ctx context.Context, url, design string, batch int) (*handover, error) {
	h := &handover{design: design, batch: batch}
	if design == "logical" {
		rc, err := pgconn.Connect(ctx, url+"&replication=database")
		if err != nil {
			return nil, err
		}
		h.repl = rc
		slot, err := pglogrepl.CreateReplicationSlot(ctx, rc, "effects_slot", "pgoutput", pglogrepl.CreateReplicationSlotOptions{})
		if err != nil {
			return nil, err
		}
		start, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
		if err != nil {
			return nil, err
		}
		if err := pglogrepl.StartReplication(ctx, rc, "effects_slot", start, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names 'effects_pub'"}}); err != nil {
			return nil, err
		}
		h.ack = start
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return nil, err
		}
		h.conn = c
		for h.pid == 0 {
			_ = c.QueryRow(ctx, `SELECT coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = 'effects_slot'`).Scan(&h.pid)
		}
		return h, nil
	}
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	h.conn = c
	h.pid = pid(ctx, c)
	h.base = parseSnapshot("1:1:")
	return h, nil
}

func (h *handover) close(ctx context.Context) {
	if h.repl != nil {
		_ = h.repl.Close(ctx)
	}
	_ = h.conn.Close(ctx)
}

func (h *handover) cpu(context.Context) time.Duration { return cpu(h.pid) }

// drain hands over rows until n were read, and returns their ids.
func (h *handover) drain(ctx context.Context, n int) ([]string, error) {
	var ids []string
	for len(ids) < n {
		got, err := h.next(ctx, time.Second)
		if err != nil {
			return nil, err
		}
		ids = append(ids, got...)
	}
	return ids, nil
}

// next hands over one batch (claim, cursor) or what the stream has (logical),
// waiting up to wait for it.
func (h *handover) next(ctx context.Context, wait time.Duration) ([]string, error) {
	switch h.design {
	case "claim":
		return h.claim(ctx)
	case "cursor":
		return h.cursor(ctx)
	default:
		return h.receive(ctx, wait)
	}
}

func (h *handover) claim(ctx context.Context) ([]string, error) {
	tx, err := h.conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	rows, err := tx.Query(ctx, `SELECT id::text, kind, payload::text, created_at, ctid FROM effects
		WHERE published_at IS NULL AND status = 'pending' ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED`, h.batch)
	if err != nil {
		return nil, err
	}
	var ids []string
	var ctids []any
	for rows.Next() {
		var id, kind, payload string
		var created time.Time
		var ctid any
		if err := rows.Scan(&id, &kind, &payload, &created, &ctid); err != nil {
			return nil, err
		}
		ids, ctids = append(ids, id), append(ctids, ctid)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(ids) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE effects SET published_at = now() WHERE ctid = ANY(ARRAY(SELECT unnest($1::tid[]))) AND id = ANY($2::uuid[])`, ctids, ids); err != nil {
			return nil, err
		}
	}
	return ids, tx.Commit(ctx)
}

// snapshot is a pg_snapshot's text parts.
type snapshot struct {
	xmin, xmax string
	xip        []string
}

func parseSnapshot(s string) snapshot {
	parts := strings.SplitN(s, ":", 3)
	sn := snapshot{xmin: parts[0], xmax: parts[1], xip: []string{}} // not nil: <> ALL(NULL) matches nothing
	if parts[2] != "" {
		sn.xip = strings.Split(parts[2], ",")
	}
	return sn
}

func (s snapshot) String() string {
	return s.xmin + ":" + s.xmax + ":" + strings.Join(s.xip, ",")
}

// cursorSQL is the table source's read (internal/ingest/table_cursor.go):
// the rest of the transaction the last batch ended in, the transactions
// base saw running after it, and those from base's xmax on.
const cursorSQL = `SELECT r.id::text, r.kind, r.payload::text, r.created_at, r.txid::text FROM (
  (SELECT id, kind, payload, created_at, txid FROM effects
    WHERE txid = $1::xid8 AND id > $2::uuid AND status = 'pending' AND published_at IS NULL ORDER BY txid, id LIMIT $7)
  UNION ALL
  (SELECT id, kind, payload, created_at, txid FROM effects
    WHERE txid = ANY($3::xid8[]) AND status = 'pending' AND published_at IS NULL ORDER BY txid, id LIMIT $7)
  UNION ALL
  (SELECT id, kind, payload, created_at, txid FROM effects
    WHERE txid >= $4::xid8 AND txid < $5::xid8 AND txid <> ALL($6::xid8[]) AND status = 'pending' AND published_at IS NULL
    ORDER BY txid, id LIMIT $7)
) r ORDER BY r.txid, r.id LIMIT $7`

// cursor reads one batch of the pass from base to target and writes the
// cursor (no write for an empty batch).
func (h *handover) cursor(ctx context.Context) ([]string, error) {
	if h.target.xmax == "" {
		var s string
		if err := h.conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&s); err != nil {
			return nil, err
		}
		h.target = parseSnapshot(s)
		h.afterTxid, h.afterID = "0", "00000000-0000-0000-0000-000000000000"
	}
	a, _ := strconv.ParseUint(h.afterTxid, 10, 64)
	baseXmax, _ := strconv.ParseUint(h.base.xmax, 10, 64)
	running := map[string]bool{}
	for _, x := range h.target.xip {
		running[x] = true
	}
	xip := []string{}
	for _, x := range h.base.xip {
		if n, _ := strconv.ParseUint(x, 10, 64); n > a && !running[x] {
			xip = append(xip, x)
		}
	}
	var rest any = h.afterTxid
	if a == 0 {
		rest = nil
	}
	rows, err := h.conn.Query(ctx, cursorSQL, rest, h.afterID, xip, strconv.FormatUint(max(baseXmax, a+1), 10), h.target.xmax, h.target.xip, h.batch)
	if err != nil {
		return nil, err
	}
	var ids []string
	var txid string
	for rows.Next() {
		var id, kind, payload string
		var created time.Time
		if err := rows.Scan(&id, &kind, &payload, &created, &txid); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(ids) == h.batch {
		h.afterTxid, h.afterID = txid, ids[len(ids)-1]
	} else {
		h.base, h.target = h.target, snapshot{}
	}
	if len(ids) > 0 {
		var target, at, aid any
		if h.target.xmax != "" {
			target, at, aid = h.target.String(), h.afterTxid, h.afterID
		}
		if _, err := h.conn.Exec(ctx, `UPDATE effects_cursor SET base = $1::pg_snapshot, target = $2::pg_snapshot,
			after_txid = $3::xid8, after_id = $4::uuid, version = version + 1, updated_at = now()
			WHERE name = 'table_source' AND version = $5`, h.base.String(), target, at, aid, h.version); err != nil {
			return nil, err
		}
		h.version++
	}
	return ids, nil
}

// receive reads the replication stream for up to wait (or until a batch of
// inserts arrived) and confirms what it read.
func (h *handover) receive(ctx context.Context, wait time.Duration) ([]string, error) {
	deadline := time.Now().Add(wait)
	var ids []string
	for len(ids) < h.batch && time.Now().Before(deadline) {
		rctx, cancel := context.WithDeadline(ctx, deadline)
		msg, err := h.repl.ReceiveMessage(rctx)
		cancel()
		if pgconn.Timeout(err) {
			break
		}
		if err != nil {
			return nil, err
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			return nil, fmt.Errorf("unexpected %T", msg)
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return nil, err
			}
			if ka.ReplyRequested {
				if err := h.confirm(ctx); err != nil {
					return nil, err
				}
			}
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return nil, err
			}
			m, err := pglogrepl.Parse(x.WALData)
			if err != nil {
				return nil, err
			}
			if ins, ok := m.(*pglogrepl.InsertMessage); ok {
				ids = append(ids, string(ins.Tuple.Columns[0].Data))
			}
			if end := x.WALStart + pglogrepl.LSN(len(x.WALData)); end > h.ack {
				h.ack = end
			}
		}
	}
	if len(ids) > 0 {
		if err := h.confirm(ctx); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// confirm tells the server what was read: the slot may free its WAL.
func (h *handover) confirm(ctx context.Context) error {
	return pglogrepl.SendStandbyStatusUpdate(ctx, h.repl, pglogrepl.StandbyStatusUpdate{WALWritePosition: h.ack})
}

// catchUp reads the stream until the slot confirmed to (the completions'
// records decoded).
func (h *handover) catchUp(ctx context.Context, to int64) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if _, err := h.receive(ctx, 200*time.Millisecond); err != nil {
			return err
		}
		// Keepalives carry the server's end of WAL; records of no
		// interest (the updates) are filtered by pgoutput but their
		// position still advances in keepalives.
		if err := h.confirm(ctx); err != nil {
			return err
		}
		var confirmed string
		if err := h.conn.QueryRow(ctx, `SELECT coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = 'effects_slot'`).Scan(&confirmed); err != nil {
			return err
		}
		var sent string
		if err := h.conn.QueryRow(ctx, `SELECT coalesce(sent_lsn::text, '0/0') FROM pg_stat_replication WHERE pid = $1`, h.pid).Scan(&sent); err != nil {
			return err
		}
		s, _ := pglogrepl.ParseLSN(sent)
		if int64(s) >= to {
			return nil
		}
	}
	return fmt.Errorf("the slot did not reach %d in a minute", to)
}

// latency inserts count single rows at rate a second and returns, in ms,
// how long after each commit returned the publisher read the row. The
// claim and cursor publishers wait on LISTEN (the trigger's NOTIFY), as the
// source does; the logical one reads its stream.
func (h *handover) latency(ctx context.Context, ins *pgx.Conn, count, rate int) ([]float64, error) {
	committed := sync.Map{}
	var listen *pgx.Conn
	if h.design != "logical" {
		c, err := pgx.ConnectConfig(ctx, h.conn.Config())
		if err != nil {
			return nil, err
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, `LISTEN effects_inserted`); err != nil {
			return nil, err
		}
		listen = c
	}
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for range count {
			<-tick.C
			var id string
			start := time.Now()
			if err := ins.QueryRow(ctx, `INSERT INTO effects (kind, payload) VALUES ('echo', '{"n": 1}') RETURNING id::text`).Scan(&id); err != nil {
				done <- err
				return
			}
			committed.Store(id, start)
		}
		done <- nil
	}()
	var lat []float64
	var insErr error
	finished := false
	for len(lat) < count {
		if listen != nil {
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			_, _ = listen.WaitForNotification(wctx)
			cancel()
		}
		for {
			ids, err := h.next(ctx, 5*time.Millisecond)
			if err != nil {
				return nil, err
			}
			now := time.Now()
			for _, id := range ids {
				for {
					if t, ok := committed.Load(id); ok {
						lat = append(lat, float64(now.Sub(t.(time.Time)).Microseconds())/1000)
						break
					}
					// Read before the inserter recorded its commit.
					time.Sleep(10 * time.Microsecond)
				}
			}
			if len(ids) < h.batch {
				break
			}
		}
		if !finished {
			select {
			case insErr = <-done:
				finished = true
				if insErr != nil {
					return nil, insErr
				}
			default:
			}
		}
	}
	if !finished {
		insErr = <-done
	}
	return lat, insErr
}
