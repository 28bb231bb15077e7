package schema_test

import (
	"strings"
	"testing"

	"github.com/effects-run/effects/internal/testenv"
)

// Migration 008 on a table with rows: every existing row reads run_at NULL
// (run now, as it was inserted to), none is in the waiting index, the
// table source's cursor index keeps the unpublished pending rows it had,
// and the due index has every pending row; a row inserted afterwards with a
// later run_at is waiting.
func TestRunAtMigration(t *testing.T) {
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	ctx := testCtx(t)
	if _, err := conn.Exec(ctx, `CREATE TABLE effects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), kind text NOT NULL,
		status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO effects (kind, status) SELECT 'old', s FROM unnest(ARRAY['pending', 'pending', 'succeeded', 'failed']) s`); err != nil {
		t.Fatal(err)
	}
	migrate(t, conn, "effects")
	// Rows from before 003 read published_at -infinity; make one look like
	// a table source's unpublished row.
	if _, err := conn.Exec(ctx, `UPDATE effects SET published_at = NULL WHERE id = (SELECT id FROM effects WHERE status = 'pending' LIMIT 1)`); err != nil {
		t.Fatal(err)
	}
	count := func(where string) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM effects WHERE `+where).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(`run_at IS NOT NULL`); n != 0 {
		t.Errorf("%d existing rows have a run_at, want none", n)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO effects (kind, run_at) VALUES ('new', now() + interval '1 day')`); err != nil {
		t.Fatal(err)
	}
	for where, want := range map[string]int{
		// The statements of the scheduler, the table source and the
		// reconciler, in the indexes' own words.
		`status = 'pending' AND published_at IS NULL AND run_at > created_at`:                              1,
		`status = 'pending' AND published_at IS NULL AND (run_at IS NULL OR run_at <= created_at)`:         1,
		`status = 'pending' AND GREATEST(created_at, run_at) < now() + interval '1 hour'`:                  2,
		`status = 'pending' AND GREATEST(created_at, run_at) > now() + interval '1 hour' AND kind = 'new'`: 1,
	} {
		if n := count(where); n != want {
			t.Errorf("%s: %d rows, want %d", where, n, want)
		}
	}
	var defs string
	if err := conn.QueryRow(ctx, `SELECT string_agg(indexdef, E'\n') FROM pg_indexes WHERE tablename = 'effects' AND schemaname = current_schema()`).Scan(&defs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"effects_waiting_idx (run_at) WHERE ((status = 'pending'::text) AND (published_at IS NULL) AND (run_at > created_at))",
		"effects_due_idx (GREATEST(created_at, run_at)) WHERE (status = 'pending'::text)",
		"effects_txid_idx (txid, id) WHERE ((status = 'pending'::text) AND (published_at IS NULL) AND ((run_at IS NULL) OR (run_at <= created_at)))",
	} {
		name, rest, _ := strings.Cut(want, " ")
		if !strings.Contains(defs, name+" ON ") || !strings.Contains(defs, "USING btree "+rest) {
			t.Errorf("no index %s in\n%s", want, defs)
		}
	}
}
