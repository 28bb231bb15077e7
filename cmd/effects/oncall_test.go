package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

// oncallTable is a migrated effects table with rows of two kinds and every
// status, at known ages; it returns the database and the ids by name.
func oncallTable(t *testing.T) (*testenv.Postgres, map[string]string) {
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
	rows, err := pg.Pool.Query(ctx, `
		INSERT INTO effects (kind, status, attempts, error, completion, created_at, completed_at, payload) VALUES
		  ('echo', 'pending',   0, NULL,          NULL,          now() - interval '3 hours',  NULL, '{"n":1}'),
		  ('echo', 'failed',    3, 'boom: 500',   NULL,          now() - interval '2 hours',  now() - interval '2 hours', '{"n":2}'),
		  ('mail', 'failed',    1, 'bad address', NULL,          now() - interval '30 minutes', now() - interval '29 minutes', '{"n":3}'),
		  ('mail', 'succeeded', 1, NULL,          '{"ok":true}', now() - interval '10 minutes', now() - interval '9 minutes', '{"n":4}')
		RETURNING id::text, kind || '-' || status`)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for rows.Next() {
		var id, name string
		if err := rows.Scan(&id, &name); err != nil {
			t.Fatal(err)
		}
		ids[name] = id
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return pg, ids
}

func listJSON(t *testing.T, args ...string) []operator.Row {
	t.Helper()
	code, out, errOut := runEffects(append([]string{"list", "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("effects list %v: exit %d\n%s", args, code, errOut)
	}
	var rows []operator.Row
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	return rows
}

func rowIDs(rows []operator.Row) []string {
	var ids []string
	for _, r := range rows {
		ids = append(ids, r.ID)
	}
	return ids
}

func TestListFiltersNewestFirst(t *testing.T) {
	pg, ids := oncallTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", "")

	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, []string{ids["mail-succeeded"], ids["mail-failed"], ids["echo-failed"], ids["echo-pending"]}},
		{[]string{"--status", "failed"}, []string{ids["mail-failed"], ids["echo-failed"]}},
		{[]string{"--status", "failed", "--kind", "echo"}, []string{ids["echo-failed"]}},
		{[]string{"--since", "1h"}, []string{ids["mail-succeeded"], ids["mail-failed"]}},
		{[]string{"--limit", "1"}, []string{ids["mail-succeeded"]}},
		{[]string{"--kind", "nope"}, nil},
	} {
		got := rowIDs(listJSON(t, tc.args...))
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("effects list %v = %v, want %v", tc.args, got, tc.want)
		}
	}
	rows := listJSON(t, "--status", "failed", "--kind", "echo")
	if r := rows[0]; r.Attempts != 3 || r.Error == nil || *r.Error != "boom: 500" || r.CompletedAt == nil {
		t.Errorf("row %+v: want attempts 3, error boom: 500, a completed_at", r)
	}

	code, out, errOut := runEffects("list", "--kind", "mail")
	if code != 0 {
		t.Fatalf("effects list: exit %d\n%s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[1], ids["mail-succeeded"]) ||
		!strings.Contains(lines[2], "bad address") || !strings.Contains(lines[2], "failed") {
		t.Errorf("table output:\n%s", out)
	}
}

func TestListBadArguments(t *testing.T) {
	pg, _ := oncallTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--status", "done"}, `--status "done": want pending, succeeded, failed or cancelled`},
		{[]string{"--kind", "a.b"}, "--kind: invalid kind"},
		{[]string{"--since", "yesterday"}, "invalid value"},
		{[]string{"--since", "-1h"}, "want a positive duration"},
		{[]string{"--limit", "0"}, "--limit 0: want 1 to 10000"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		code, _, errOut := runEffects(append([]string{"list"}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("effects list %v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	t.Setenv("DATABASE_URL", "")
	if code, _, errOut := runEffects("list"); code != 2 || !strings.Contains(errOut, "DATABASE_URL is not set") {
		t.Errorf("without DATABASE_URL: exit %d, %q", code, errOut)
	}
	t.Setenv("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if code, _, errOut := runEffects("list"); code != 1 || !strings.Contains(errOut, "connect to PostgreSQL") {
		t.Errorf("unreachable database: exit %d, %q", code, errOut)
	}
}
