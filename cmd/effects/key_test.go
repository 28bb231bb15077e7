package main

import (
	"context"
	"strings"
	"testing"
)

// keyedRows adds rows of kind sync with keys to the on-call table, oldest
// first: key 42 failed and then pending (the holder), key 43 failed twice,
// key 44 failed once. It returns their ids by name.
func keyedRows(t *testing.T, ids map[string]string, exec func(sql string, args ...any) string) {
	t.Helper()
	for _, r := range []struct{ name, key, status, age string }{
		{"42-failed", "42", "failed", "50 minutes"},
		{"42-pending", "42", "pending", "40 minutes"},
		{"43-failed-a", "43", "failed", "30 minutes"},
		{"43-failed-b", "43", "failed", "20 minutes"},
		{"44-failed", "44", "failed", "10 minutes"},
	} {
		ids[r.name] = exec(`INSERT INTO effects (kind, key, status, attempts, error, created_at)
			VALUES ('sync', $1, $2, 1, CASE WHEN $2 = 'failed' THEN 'boom' END, now() - $3::interval) RETURNING id::text`,
			r.key, r.status, r.age)
	}
}

// `effects list` and `show` show the key, and `list --key` finds the
// effects of a key.
func TestListAndShowKey(t *testing.T) {
	pg, ids := oncallTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", "")
	keyedRows(t, ids, func(sql string, args ...any) (id string) {
		if err := pg.Pool.QueryRow(context.Background(), sql, args...).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	})

	got := listJSON(t, "--key", "42")
	if len(got) != 2 || got[0].ID != ids["42-pending"] || got[1].ID != ids["42-failed"] {
		t.Fatalf("list --key 42 = %v, want the pending then the failed row of key 42", rowIDs(got))
	}
	if got[0].Key == nil || *got[0].Key != "42" {
		t.Errorf("key in --json = %v", got[0].Key)
	}
	if rows := listJSON(t, "--kind", "echo"); len(rows) == 0 || rows[0].Key != nil {
		t.Errorf("a row without a key: %+v, want key null", rows)
	}
	code, out, errOut := runEffects("list", "--key", "42", "--status", "pending")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || !strings.Contains(lines[0], "KEY") || !strings.Contains(lines[1], " 42 ") {
		t.Errorf("table output (exit %d, %s):\n%s", code, errOut, out)
	}

	if rep := showJSON(t, ids["42-pending"]); rep.Key == nil || *rep.Key != "42" {
		t.Errorf("show --json key = %v", rep.Key)
	}
	if code, out, _ := runEffects("show", ids["42-pending"]); code != 0 || !strings.Contains(out, "key:") || !strings.Contains(out, "42") {
		t.Errorf("show text (exit %d):\n%s", code, out)
	}
	if code, out, _ := runEffects("show", ids["echo-failed"]); code != 0 || strings.Contains(out, "key:") {
		t.Errorf("show of a row without a key (exit %d):\n%s", code, out)
	}
}

// `effects retry` does not run two effects of a key at once: a failed row
// whose key a pending row holds is refused (named by id: exit 1) or skipped
// (selected by --status), and of several failed rows of one key one is
// re-run. Once the holder is final the failed row is re-run.
func TestRetryKeyedEffects(t *testing.T) {
	pg, ids := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)
	ctx := context.Background()
	keyedRows(t, ids, func(sql string, args ...any) (id string) {
		if err := pg.Pool.QueryRow(ctx, sql, args...).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	})

	out := retryJSON(t, 1, ids["42-failed"])
	if r := out.Results[0]; r.Outcome != "error" || !strings.Contains(r.Error, `key "42" of kind sync is held by pending effect `+ids["42-pending"]) {
		t.Errorf("re-run of a failed row whose key is held = %+v", r)
	}
	if mk := rerunMarks(t, pg)[ids["42-failed"]]; mk.at != nil {
		t.Error("the refused re-run marked the row")
	}

	for _, dry := range []bool{true, false} {
		args := []string{"--status", "failed", "--kind", "sync"}
		if dry {
			args = append(args, "--dry-run")
		}
		out = retryJSON(t, 0, args...)
		want := map[string]string{
			ids["42-failed"]:   "skipped",
			ids["43-failed-a"]: "retried",
			ids["43-failed-b"]: "skipped",
			ids["44-failed"]:   "retried",
		}
		if dry {
			for id, o := range want {
				if o == "retried" {
					want[id] = "would retry"
				}
			}
		}
		if len(out.Results) != len(want) {
			t.Fatalf("dry run %v: results %+v", dry, out.Results)
		}
		for _, r := range out.Results {
			if r.Outcome != want[r.ID] {
				t.Errorf("dry run %v: %s: %s (%s), want %s", dry, r.ID, r.Outcome, r.Error, want[r.ID])
			}
			if r.ID == ids["43-failed-b"] && !strings.Contains(r.Error, "effect "+ids["43-failed-a"]+" with the same key is re-run by this command") {
				t.Errorf("second row of key 43: %q", r.Error)
			}
		}
	}
	if got := len(streamEffects(t, js)); got != 2 {
		t.Errorf("%d messages in the stream, want 2 (keys 43 and 44)", got)
	}

	// The holder is final: the key is free, the failed row is re-run.
	if _, err := pg.Pool.Exec(ctx, `UPDATE effects SET status = 'succeeded' WHERE id = $1`, ids["42-pending"]); err != nil {
		t.Fatal(err)
	}
	if r := retryJSON(t, 0, ids["42-failed"]).Results[0]; r.Outcome != "retried" {
		t.Errorf("after the holder succeeded: %+v", r)
	}
}
