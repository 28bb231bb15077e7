package schema_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func migrate(t *testing.T, conn *pgx.Conn, table string) {
	t.Helper()
	if err := schema.Migrate(testCtx(t), conn, table); err != nil {
		t.Fatalf("migrate %s: %v", table, err)
	}
}

// catalog describes the table as PostgreSQL sees it: columns, indexes and
// constraints, one per line, sorted. Two equal catalogs mean the same shape.
func catalog(t *testing.T, conn *pgx.Conn, table string) string {
	t.Helper()
	tb, err := schema.ParseTable(table)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(testCtx(t), `
		SELECT 'column ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
		       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
		       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
		  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
		 WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
		UNION ALL
		SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1::regclass
		UNION ALL
		SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass
		ORDER BY 1`, tb.Quoted())
	if err != nil {
		t.Fatalf("catalog: %v", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("catalog: %v", err)
	}
	return strings.Join(lines, "\n")
}

func version(t *testing.T, conn *pgx.Conn, table string) int32 {
	t.Helper()
	tb, err := schema.ParseTable(table)
	if err != nil {
		t.Fatal(err)
	}
	var v int32
	if err := conn.QueryRow(testCtx(t), "SELECT version FROM "+tb.VersionTable().Quoted()).Scan(&v); err != nil {
		t.Fatalf("read version: %v", err)
	}
	return v
}

func TestMigrateCreatesTable(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	ctx := testCtx(t)

	if err := schema.Check(ctx, conn, "effects"); !errors.Is(err, schema.ErrNotMigrated) {
		t.Fatalf("Check before migrate = %v, want ErrNotMigrated", err)
	}
	migrate(t, conn, "effects")
	if err := schema.Check(ctx, conn, "effects"); err != nil {
		t.Fatalf("Check after migrate: %v", err)
	}
	if v := version(t, conn, "effects"); v != schema.LatestVersion() {
		t.Fatalf("version %d, want %d", v, schema.LatestVersion())
	}

	got := catalog(t, conn, "effects")
	for _, want := range []string{
		"column id uuid not null default gen_random_uuid()",
		"column kind text not null",
		"column payload jsonb not null default '{}'::jsonb",
		"column created_at timestamp with time zone not null default now()",
		"column status text not null default 'pending'::text",
		"column attempts integer not null default 0",
		"column completed_at timestamp with time zone",
		"column completion jsonb",
		"column error text",
		"constraint effects_pkey PRIMARY KEY (id)",
		// 007: cancelled allowed; added NOT VALID (the old, narrower
		// check held for every row).
		"constraint effects_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text]))) NOT VALID",
		"column cancelled_at timestamp with time zone",
		"column cancelled_by text",
		"USING btree (created_at) WHERE (status = 'pending'::text)",
		"USING btree (created_at) WHERE (status = 'failed'::text)",
		"USING btree (created_at) WHERE (status = 'succeeded'::text)",
		"effects_cancelled_idx ON",
		"effects_cancel_at_idx ON",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("catalog lacks %q; have:\n%s", want, got)
		}
	}

	// The defaults make a row out of kind alone, as Hasura or SQL insert it.
	var id, status string
	var payload string
	var attempts int
	err := conn.QueryRow(ctx, `INSERT INTO effects (kind) VALUES ('echo') RETURNING id::text, payload::text, status, attempts`).
		Scan(&id, &payload, &status, &attempts)
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	if payload != "{}" || status != "pending" || attempts != 0 || id == "" {
		t.Errorf("defaults: id=%q payload=%q status=%q attempts=%d", id, payload, status, attempts)
	}
	if _, err := conn.Exec(ctx, `UPDATE effects SET status = 'done' WHERE id = $1`, id); err == nil {
		t.Error("status 'done' was accepted; the check constraint is missing")
	}
	if _, err := conn.Exec(ctx, `UPDATE effects SET status = 'cancelled', cancelled_at = now() WHERE id = $1`, id); err != nil {
		t.Errorf("status 'cancelled' refused: %v", err)
	}
	// The paused kinds' table (007).
	if _, err := conn.Exec(ctx, `INSERT INTO effects_paused (kind, paused, paused_at, paused_by) VALUES ('echo', true, now(), 'alice')`); err != nil {
		t.Errorf("effects_paused: %v", err)
	}

	// The listing queries the indexes are for use them.
	if _, err := conn.Exec(ctx, "SET enable_seqscan = off; SET enable_bitmapscan = off"); err != nil {
		t.Fatal(err)
	}
	// (On an empty table the planner prefers anything, so the alternatives
	// are switched off: this checks the index can serve the query, in order.)
	for q, index := range map[string]string{
		"SELECT id FROM effects WHERE status = 'pending' ORDER BY created_at LIMIT 100":     "effects_pending_idx",
		"SELECT id FROM effects WHERE status = 'failed' ORDER BY created_at DESC LIMIT 100": "effects_failed_idx",
		// What retention removes, oldest first.
		"SELECT id FROM effects WHERE status = 'succeeded' ORDER BY created_at LIMIT 100": "effects_succeeded_idx",
		"SELECT id FROM effects WHERE status = 'cancelled' ORDER BY created_at LIMIT 100": "effects_cancelled_idx",
		// The recent cancels the completer copies to the dispatchers.
		"SELECT id FROM effects WHERE status = 'cancelled' AND cancelled_at > now() - interval '1 hour' ORDER BY cancelled_at": "effects_cancel_at_idx",
	} {
		var plan string
		rows, err := conn.Query(ctx, "EXPLAIN "+q)
		if err != nil {
			t.Fatal(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		plan = strings.Join(lines, "\n")
		if !strings.Contains(plan, "Index Scan") || !strings.Contains(plan, index) || strings.Contains(plan, "Sort") {
			t.Errorf("%s:\n%s\nwant an index scan without a sort", q, plan)
		}
	}
}

// TestMigrateSetsStorageOptions checks migration 002's storage settings,
// which the catalog above does not show.
func TestMigrateSetsStorageOptions(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	migrate(t, conn, "effects")
	var opts []string
	if err := conn.QueryRow(testCtx(t), `SELECT reloptions FROM pg_class WHERE oid = 'effects'::regclass`).Scan(&opts); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(opts, ",")
	for _, want := range []string{
		"autovacuum_vacuum_scale_factor=0.02",
		"autovacuum_analyze_scale_factor=0.02",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("reloptions %q lack %q", got, want)
		}
	}
}

func TestMigrateAgainIsNoop(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	migrate(t, conn, "effects")
	if _, err := conn.Exec(testCtx(t), `INSERT INTO effects (kind, payload) VALUES ('echo', '{"a":1}')`); err != nil {
		t.Fatal(err)
	}
	before := catalog(t, conn, "effects")
	migrate(t, conn, "effects")
	migrate(t, conn, "effects")
	if after := catalog(t, conn, "effects"); after != before {
		t.Fatalf("catalog changed on re-run:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	var n int
	if err := conn.QueryRow(testCtx(t), "SELECT count(*) FROM effects").Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows after re-run: %d, %v", n, err)
	}
	if v := version(t, conn, "effects"); v != schema.LatestVersion() {
		t.Fatalf("version %d, want %d", v, schema.LatestVersion())
	}
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	const n = 4
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		conns[i] = connect(t, pg.URL)
	}
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = schema.Migrate(testCtx(t), c, "effects")
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("migrate %d: %v", i, err)
		}
	}
	if err := schema.Check(testCtx(t), conns[0], "effects"); err != nil {
		t.Fatal(err)
	}
	var versionRows int
	if err := conns[0].QueryRow(testCtx(t), "SELECT count(*) FROM effects_schema_version").Scan(&versionRows); err != nil || versionRows != 1 {
		t.Fatalf("version table rows: %d, %v", versionRows, err)
	}
}

func TestMigrateSchemaQualified(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	ctx := testCtx(t)

	// A schema that exists (the test's own), with a name of the user's.
	table := pg.Schema + ".Outbox"
	migrate(t, conn, table)
	if err := schema.Check(ctx, conn, table); err != nil {
		t.Fatal(err)
	}
	var n int
	err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename IN ('Outbox', 'Outbox_schema_version')`, pg.Schema).Scan(&n)
	if err != nil || n != 2 {
		t.Fatalf("tables in %s: %d, %v", pg.Schema, n, err)
	}

	// A schema that does not exist yet is created, and its table and version
	// table are independent of an unqualified "effects".
	other := pg.Schema + "_x"
	t.Cleanup(func() {
		c := connect(t, pg.URL)
		_, _ = c.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{other}.Sanitize()+" CASCADE")
	})
	migrate(t, conn, other+".effects")
	if err := schema.Check(ctx, conn, other+".effects"); err != nil {
		t.Fatal(err)
	}
	if err := schema.Check(ctx, conn, "effects"); !errors.Is(err, schema.ErrNotMigrated) {
		t.Fatalf("unqualified effects: %v, want ErrNotMigrated", err)
	}
	migrate(t, conn, "effects")
	if _, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (kind) VALUES ('a')", pgx.Identifier{other, "effects"}.Sanitize())); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM effects").Scan(&n); err != nil || n != 0 {
		t.Fatalf("unqualified effects has %d rows (%v); the tables are not separate", n, err)
	}
}

func TestMigrateUpgradesTableMadeByHand(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	ctx := testCtx(t)

	// What someone might make in Hasura's console before adopting this project.
	_, err := conn.Exec(ctx, `
		CREATE TABLE effects (
			id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
			kind text NOT NULL,
			payload jsonb NOT NULL DEFAULT '{}',
			created_at timestamptz NOT NULL DEFAULT now(),
			note text
		);
		INSERT INTO effects (kind, note) VALUES ('echo', 'keep me');`)
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Check(ctx, conn, "effects"); !errors.Is(err, schema.ErrNotMigrated) {
		t.Fatalf("Check on a table made by hand = %v, want ErrNotMigrated", err)
	}
	migrate(t, conn, "effects")
	if err := schema.Check(ctx, conn, "effects"); err != nil {
		t.Fatal(err)
	}
	var status, note string
	var attempts int
	err = conn.QueryRow(ctx, "SELECT status, attempts, note FROM effects").Scan(&status, &attempts, &note)
	if err != nil {
		t.Fatal(err)
	}
	if status != "pending" || attempts != 0 || note != "keep me" {
		t.Fatalf("existing row after upgrade: status=%q attempts=%d note=%q", status, attempts, note)
	}
	got := catalog(t, conn, "effects")
	for _, want := range []string{"column completion jsonb", "column error text", "constraint effects_status_check", "effects_pending_idx", "effects_failed_idx", "effects_succeeded_idx", "column note text"} {
		if !strings.Contains(got, want) {
			t.Errorf("catalog lacks %q; have:\n%s", want, got)
		}
	}
	// A fresh table and an upgraded one end up with the same shape, apart
	// from the extra column.
	migrate(t, conn, "fresh")
	fresh := strings.ReplaceAll(catalog(t, conn, "fresh"), "fresh", "effects")
	upgraded := strings.ReplaceAll(got, "column note text\n", "")
	if fresh != upgraded {
		t.Errorf("upgraded table differs from a fresh one:\nfresh:\n%s\nupgraded:\n%s", fresh, upgraded)
	}
}

func TestParseTable(t *testing.T) {
	t.Parallel()
	for _, ok := range []struct{ in, quoted string }{
		{"effects", `"effects"`},
		{"my_schema.effects", `"my_schema"."effects"`},
		{"Effects", `"Effects"`},
		{"_x1", `"_x1"`},
		{strings.Repeat("a", schema.MaxTableNameLen), `"` + strings.Repeat("a", schema.MaxTableNameLen) + `"`},
		{strings.Repeat("s", 63) + ".e", `"` + strings.Repeat("s", 63) + `"."e"`},
	} {
		tb, err := schema.ParseTable(ok.in)
		if err != nil {
			t.Errorf("ParseTable(%q): %v", ok.in, err)
			continue
		}
		if tb.Quoted() != ok.quoted || tb.String() != ok.in {
			t.Errorf("ParseTable(%q) = %s (%s)", ok.in, tb.Quoted(), tb)
		}
	}
	for _, bad := range []string{
		"", ".", "a.", ".a", "a.b.c", "a b", `a"b`, "a'b", "1abc", "a-b", "a;drop table x", "éffects",
		"effects ", strings.Repeat("a", schema.MaxTableNameLen+1), strings.Repeat("s", 64) + ".e",
	} {
		if tb, err := schema.ParseTable(bad); err == nil {
			t.Errorf("ParseTable(%q) = %s, want an error", bad, tb.Quoted())
		}
	}
}

func TestMigrateRefusesBadName(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	err := schema.Migrate(testCtx(t), conn, `effects"; DROP TABLE x; --`)
	if err == nil || !strings.Contains(err.Error(), "may only contain") {
		t.Fatalf("Migrate with a bad name: %v", err)
	}
	var n int
	if err := conn.QueryRow(testCtx(t), "SELECT count(*) FROM pg_tables WHERE schemaname = $1", pg.Schema).Scan(&n); err != nil || n != 0 {
		t.Fatalf("tables created: %d, %v", n, err)
	}
}
