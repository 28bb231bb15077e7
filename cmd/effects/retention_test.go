package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

// retentionTable is a migrated effects table in a schema of the test's own
// with one pending, two old and one new succeeded, and one old failed row.
func retentionTable(t *testing.T) *testenv.Postgres {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg := testenv.StartPostgres(t)
	conn, err := pg.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := schema.Migrate(ctx, conn.Conn(), "effects"); err != nil {
		t.Fatal(err)
	}
	_, err = pg.Pool.Exec(ctx, `
		INSERT INTO effects (kind, status, created_at, completed_at) VALUES
		  ('echo', 'pending',   now() - interval '100 hours', NULL),
		  ('echo', 'succeeded', now() - interval '50 hours', now() - interval '50 hours'),
		  ('echo', 'succeeded', now() - interval '49 hours', now() - interval '49 hours'),
		  ('echo', 'succeeded', now() - interval '1 hour',   now() - interval '1 hour'),
		  ('echo', 'failed',    now() - interval '50 hours', now() - interval '50 hours')`)
	if err != nil {
		t.Fatal(err)
	}
	return pg
}

func countByStatus(t *testing.T, pg *testenv.Postgres) map[string]int {
	t.Helper()
	rows, err := pg.Pool.Query(context.Background(), `SELECT status, count(*) FROM effects GROUP BY status`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			t.Fatal(err)
		}
		out[s] = n
	}
	return out
}

func runEffects(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// Not parallel: the command reads the process environment (t.Setenv).
func TestRetentionShowDryRunAndRun(t *testing.T) {
	pg := retentionTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("EFFECTS_RETAIN_SUCCEEDED", "24h")
	t.Setenv("EFFECTS_RETAIN_FAILED", "")
	want := map[string]int{"pending": 1, "succeeded": 3, "failed": 1}

	code, out, errOut := runEffects("retention")
	if code != 0 {
		t.Fatalf("effects retention: exit %d\n%s", code, errOut)
	}
	for _, s := range []string{"succeeded rows: removed 24h0m0s after completion", "failed rows: kept forever", "succeeded 50h0m0s"} {
		if !strings.Contains(out, s) {
			t.Errorf("effects retention output lacks %q:\n%s", s, out)
		}
	}

	code, out, errOut = runEffects("retention", "--dry-run", "--json")
	if code != 0 {
		t.Fatalf("--dry-run: exit %d\n%s", code, errOut)
	}
	var rep retentionReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if rep.Pass == nil || !rep.Pass.DryRun || rep.Pass.Succeeded != 2 || rep.Pass.Failed != 0 {
		t.Errorf("dry run = %+v, want 2 succeeded and 0 failed rows, dry", rep.Pass)
	}
	if got := countByStatus(t, pg); got["succeeded"] != want["succeeded"] || got["pending"] != 1 || got["failed"] != 1 {
		t.Fatalf("a dry run changed the table: %v, want %v", got, want)
	}

	code, out, errOut = runEffects("retention", "--run")
	if code != 0 {
		t.Fatalf("--run: exit %d\n%s", code, errOut)
	}
	if !strings.Contains(out, "removed: 2 succeeded, 0 failed") {
		t.Errorf("--run output:\n%s", out)
	}
	if got := countByStatus(t, pg); got["succeeded"] != 1 || got["pending"] != 1 || got["failed"] != 1 {
		t.Fatalf("after --run: %v, want 1 pending, 1 succeeded (the new one), 1 failed", got)
	}
}

func TestRetentionErrors(t *testing.T) {
	pg := retentionTable(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"no database", map[string]string{"DATABASE_URL": ""}, nil, 2, "DATABASE_URL is not set"},
		{"bad duration", map[string]string{"EFFECTS_RETAIN_FAILED": "soon"}, nil, 2, "EFFECTS_RETAIN_FAILED"},
		{"both flags", nil, []string{"--dry-run", "--run"}, 2, "exclude each other"},
		{"stray argument", nil, []string{"now"}, 2, `unexpected argument "now"`},
		{"nothing to remove", map[string]string{"EFFECTS_RETAIN_SUCCEEDED": "0"}, []string{"--run"}, 2, "no retention is set"},
		{"bad table", map[string]string{"EFFECTS_TABLE": "a;b"}, nil, 2, "EFFECTS_TABLE"},
		{"unreachable database", map[string]string{"DATABASE_URL": "postgres://u:hunter2@127.0.0.1:1/x?connect_timeout=2"}, nil, 1, "connect to PostgreSQL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("DATABASE_URL", pg.URL)
			t.Setenv("EFFECTS_RETAIN_SUCCEEDED", "24h")
			t.Setenv("EFFECTS_RETAIN_FAILED", "")
			t.Setenv("EFFECTS_TABLE", "effects")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, _, errOut := runEffects(append([]string{"retention"}, tc.args...)...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut, tc.code, tc.want)
			}
			if strings.Contains(errOut, "hunter2") {
				t.Errorf("stderr shows the password: %s", errOut)
			}
		})
	}
	if got := countByStatus(t, pg); got["succeeded"] != 3 {
		t.Errorf("a refused command changed the table: %v", got)
	}
}
