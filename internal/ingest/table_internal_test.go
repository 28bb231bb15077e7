package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// reader is a table source on a table of rows pending rows, not running,
// and a connection to read batches on.
func reader(t *testing.T, rows int) (context.Context, *TableSource, *pgx.Conn, *testenv.Postgres) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	pg := testenv.StartEffectsTable(t, rows)
	_, js := testenv.StartNATS(t).Connect(t)
	s, err := NewTableSource(TableConfig{DatabaseURL: pg.URL}, pg.Pool, js, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, `ANALYZE effects`); err != nil {
		t.Fatal(err)
	}
	return ctx, s, conn, pg
}

// TestTableSourceReadsByIndex: a batch read walks the partial (txid, id)
// index in key order from where the last batch ended (two index scans, no
// sort of the table, no sequential scan), planned with a real batch's
// values, with 20,000 rows waiting; and the batches cover every row once.
func TestTableSourceReadsByIndex(t *testing.T) {
	ctx, s, conn, _ := reader(t, 20000)
	pos := cursorPos{base: zeroSnapshot}
	seen := map[string]bool{}
	for batches := 0; ; batches++ {
		if pos.target != nil && batches == 3 {
			args, err := readArgs(pos, s.cfg.BatchSize)
			if err != nil {
				t.Fatal(err)
			}
			plan := testenv.Explain(ctx, t, conn, s.sql.read, args...)
			if !strings.Contains(plan, "effects_txid_idx") || strings.Contains(plan, "Seq Scan") {
				t.Fatalf("the read does not walk the (txid, id) index:\n%s", plan)
			}
		}
		rows, next, err := s.readBatch(ctx, conn, pos)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if seen[r.id] {
				t.Fatalf("row %s read twice", r.id)
			}
			seen[r.id] = true
		}
		pos = next
		if len(rows) < s.cfg.BatchSize {
			break
		}
	}
	if len(seen) != 20000 {
		t.Fatalf("read %d rows, want 20000", len(seen))
	}
}

// A crash between a batch's acks and its cursor write: the cursor stays
// where it was, the next owner publishes the batch again, and JetStream
// stores each row once (message id = row id).
func TestTableSourceCrashBeforeCursorWrite(t *testing.T) {
	pg := testenv.StartEffectsTable(t, 0)
	_, js := testenv.StartNATS(t).Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects (kind, payload) SELECT 'echo', '{}' FROM generate_series(1, 120)`); err != nil {
		t.Fatal(err)
	}
	crash := errors.New("crash")
	first, err := NewTableSource(TableConfig{DatabaseURL: pg.URL, BatchSize: 50}, pg.Pool, js, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var acked atomic.Int64
	first.afterPublish = func(rows int) error {
		if acked.Add(int64(rows)) > 50 {
			return crash // the second batch's acks arrived, its cursor write never happens
		}
		return nil
	}
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.publish(ctx, conn, &retry.Backoff{}); !errors.Is(err, crash) {
		t.Fatalf("publish: %v, want the crash", err)
	}
	_ = conn.Close(ctx)
	var passed int
	if err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM effects e WHERE `+PublishedSQL(first.table, "e")).Scan(&passed); err != nil {
		t.Fatal(err)
	}
	if passed != 50 {
		t.Fatalf("the cursor passed %d rows, want the first batch's 50", passed)
	}

	reg := prometheus.NewRegistry()
	second, err := NewTableSource(TableConfig{DatabaseURL: pg.URL, BatchSize: 50}, pg.Pool, js, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	var rest atomic.Int64
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	second.afterPublish = func(rows int) error {
		if rest.Add(int64(rows)) >= 70 {
			stop() // once every row went again; the cursor write still happens
		}
		return nil
	}
	conn, err = pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := second.publish(sctx, conn, &retry.Backoff{}); err != nil {
		t.Fatal(err)
	}
	if err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM effects e WHERE `+PublishedSQL(first.table, "e")).Scan(&passed); err != nil || passed != 120 {
		t.Fatalf("the cursor passed %d rows (%v), want 120", passed, err)
	}
	// The second batch (50) went again with the last 20; a fast batch
	// counts a duplicate it skipped as published.
	if got := testenv.MetricValue(t, reg, "effects_ingested_total"); got != 70 {
		t.Errorf("the second owner published %v rows, want 70: the second batch again and the rest", got)
	}
	ids := map[string]int{}
	s, err := js.Stream(ctx, "EFFECTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		ids[m.Header.Get("Nats-Msg-Id")]++
	}
	if len(ids) != 120 || int(info.State.Msgs) != 120 {
		t.Fatalf("the stream holds %d messages of %d rows, want 120 of 120", info.State.Msgs, len(ids))
	}
}

// Batches follow (txid, id) as numbers: rows of transactions 9, 10, 100 and
// 1000 (ids a transaction gets as the server ages; their decimal text sorts
// 10 < 100 < 1000 < 9), read in batches of 1 to 3, come in that order, each
// once; a pending row from before migration 006 (txid 0) is not read.
func TestTableSourceReadsInTxidOrder(t *testing.T) {
	ctx, s, conn, pg := reader(t, 0)
	if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects (kind, txid) VALUES ('echo', '1000'), ('echo', '9'), ('echo', '100'), ('echo', '10'), ('echo', '10'), ('echo', '0')`); err != nil {
		t.Fatal(err)
	}
	for batch := 1; batch <= 3; batch++ {
		s.cfg.BatchSize = batch
		pos := cursorPos{base: zeroSnapshot}
		var got []string
		for range 10 {
			rows, next, err := s.readBatch(ctx, conn, pos)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				got = append(got, r.txid)
			}
			pos = next
			if len(rows) < batch {
				break
			}
		}
		if strings.Join(got, " ") != "9 10 10 100 1000" {
			t.Errorf("batches of %d: read transactions %v, want 9 10 10 100 1000", batch, got)
		}
	}
}

// A read after the cursor passed 20,000 rows that are still pending (the
// dispatchers' backlog) touches a few index pages, not the passed rows'
// entries: each index scan starts at its own bound.
func TestTableSourceReadSkipsPassedRows(t *testing.T) {
	ctx, s, conn, _ := reader(t, 20000)
	pos := cursorPos{base: zeroSnapshot}
	for {
		rows, next, err := s.readBatch(ctx, conn, pos)
		if err != nil {
			t.Fatal(err)
		}
		pos = next
		if len(rows) < s.cfg.BatchSize {
			break
		}
	}
	// Three more rows, and a pass to read them.
	if _, err := conn.Exec(ctx, `INSERT INTO effects (kind) SELECT 'echo' FROM generate_series(1, 3)`); err != nil {
		t.Fatal(err)
	}
	var snap string
	if err := conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
		t.Fatal(err)
	}
	target, err := parseSnapshot(snap)
	if err != nil {
		t.Fatal(err)
	}
	pos.target, pos.after = &target, firstKey
	args, err := readArgs(pos, s.cfg.BatchSize)
	if err != nil {
		t.Fatal(err)
	}
	var plan string
	if err := conn.QueryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, FORMAT JSON) "+s.sql.read, args...).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	var out []struct {
		Plan struct {
			Hit  int `json:"Shared Hit Blocks"`
			Read int `json:"Shared Read Blocks"`
			Rows int `json:"Actual Rows"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal([]byte(plan), &out); err != nil || len(out) != 1 {
		t.Fatalf("plan %s: %v", plan, err)
	}
	if p := out[0].Plan; p.Rows != 3 || p.Hit+p.Read > 20 {
		t.Fatalf("the read returned %d rows touching %d pages, want 3 rows and a few pages:\n%s", p.Rows, p.Hit+p.Read, plan)
	}
}

// A cursor ahead of the server's transaction ids (the table restored from
// another cluster) is refused with the reason: every row inserted here
// would read as published.
func TestTableSourceRefusesCursorFromAnotherServer(t *testing.T) {
	ctx, s, conn, pg := reader(t, 1)
	if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects_cursor (name, base) VALUES ('table_source', '900000000000:900000000000:')`); err != nil {
		t.Fatal(err)
	}
	err := s.publish(ctx, conn, &retry.Backoff{})
	if err == nil || !strings.Contains(err.Error(), "ahead of this server's transaction ids") {
		t.Fatalf("publish: %v, want the cursor refused", err)
	}
}
