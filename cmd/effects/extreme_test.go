package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/testenv"
)

// extremeCreatedAt are created_at values a row can hold that a time.Time
// scan or an age computation trips over, with what the commands print.
var extremeCreatedAt = []struct{ sql, shown string }{
	{"infinity", "infinity"},
	{"-infinity", "-infinity"},
	{"0044-03-15 00:00:00+00 BC", "0044-03-15T00:00:00Z BC"},
}

// insertExtreme adds, for each extreme created_at, a row of kind with
// status; it returns their ids in the order of extremeCreatedAt.
func insertExtreme(t *testing.T, pg *testenv.Postgres, kind, status string) []string {
	t.Helper()
	var ids []string
	for _, c := range extremeCreatedAt {
		var id string
		if err := pg.Pool.QueryRow(context.Background(),
			`INSERT INTO effects (kind, status, created_at) VALUES ($1, $2, $3::timestamptz) RETURNING id::text`,
			kind, status, c.sql).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// One row with an extreme created_at does not break list and show for the
// others: 'infinity' sorts first (newest), and a time.Time scan of it
// failed the whole query.
func TestListAndShowRowsWithExtremeCreatedAt(t *testing.T) {
	pg, ids := oncallTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", "")
	extreme := insertExtreme(t, pg, "echo", "pending")

	rows := listJSON(t)
	if len(rows) != len(ids)+len(extreme) {
		t.Fatalf("list: %d rows, want %d: %v", len(rows), len(ids)+len(extreme), rowIDs(rows))
	}
	if rows[0].ID != extreme[0] {
		t.Errorf("list: first row %s, want the infinity one %s", rows[0].ID, extreme[0])
	}
	code, out, errOut := runEffects("list", "--json")
	if code != 0 || !strings.Contains(out, `"created_at": "infinity"`) || !strings.Contains(out, `"created_at": "-infinity"`) {
		t.Errorf("list --json (exit %d): %s\n%s", code, errOut, out)
	}
	code, out, errOut = runEffects("list")
	if code != 0 {
		t.Fatalf("list: exit %d\n%s", code, errOut)
	}
	for i, c := range extremeCreatedAt {
		line := lineWith(out, extreme[i])
		if !strings.Contains(line, " "+c.shown+" ") {
			t.Errorf("list: the row created at %s shows %q", c.sql, line)
		}
	}
	for i, c := range extremeCreatedAt {
		rep := showJSON(t, extreme[i])
		if got := rep.CreatedAt.Format(time.RFC3339Nano); got != c.shown {
			t.Errorf("show --json %s: created_at %q, want %q", c.sql, got, c.shown)
		}
		code, out, errOut := runEffects("show", extreme[i])
		if code != 0 || !strings.Contains(out, c.shown) {
			t.Errorf("show %s (exit %d): %s\n%s", c.sql, code, errOut, out)
		}
	}
	// With NATS, show looks for the pending effect in the stream: from the
	// subject's start when created_at gives no time to start from.
	n, js := oncallNATS(t)
	t.Setenv("NATS_URL", n.URL)
	publish(t, js, "ev-infinity", extreme[0], "echo")
	rep := showJSON(t, extreme[0])
	if rep.JetStream == nil || len(rep.JetStream.Messages) != 1 {
		t.Errorf("show with NATS: %+v", rep.JetStream)
	}
}

func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// Pending rows created at infinity or -infinity have no age: stats leaves
// them out of the oldest pending age instead of failing ("interval out of
// range"). A BC row has one, longer than a time.Duration holds: it is
// printed in hours, not wrapped around to a negative age.
func TestStatsIgnoresExtremeCreatedAtForAges(t *testing.T) {
	pg, _ := oncallTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", "")
	for _, kind := range []string{"echo", "mail"} {
		for _, v := range []string{"infinity", "-infinity"} {
			if _, err := pg.Pool.Exec(context.Background(),
				`INSERT INTO effects (kind, status, created_at) VALUES ($1, 'pending', $2::timestamptz)`, kind, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	stats := func() operator.Stats {
		t.Helper()
		code, out, errOut := runEffects("stats", "--json")
		if code != 0 {
			t.Fatalf("stats: exit %d\n%s", code, errOut)
		}
		var rep operator.Stats
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("--json: %v\n%s", err, out)
		}
		if code, _, errOut := runEffects("stats"); code != 0 {
			t.Errorf("stats: exit %d\n%s", code, errOut)
		}
		return rep
	}
	rep := stats()
	if rep.Total.Pending != 5 {
		t.Errorf("pending %d, want 5", rep.Total.Pending)
	}
	if age, err := time.ParseDuration(rep.OldestPendingAge); err != nil || age < 3*time.Hour || age > 4*time.Hour {
		t.Errorf("oldest pending age %q, want about 3h (the finite row's)", rep.OldestPendingAge)
	}
	for _, k := range rep.Kinds {
		if k.Kind == "mail" && k.OldestPendingAge != "" {
			t.Errorf("mail: oldest pending age %q, want none (no finite pending row)", k.OldestPendingAge)
		}
	}

	if _, err := pg.Pool.Exec(context.Background(),
		`INSERT INTO effects (kind, status, created_at) VALUES ('mail', 'pending', '0044-03-15 00:00:00+00 BC')`); err != nil {
		t.Fatal(err)
	}
	rep = stats()
	hours, err := strconv.ParseFloat(strings.TrimSuffix(rep.OldestPendingAge, "h"), 64)
	if years := hours / 24 / 365.25; err != nil || years < 2000 || years > 2200 {
		t.Errorf("oldest pending age %q, want over 2000 years (the row from 44 BC)", rep.OldestPendingAge)
	}
}

// retry refuses, with the reason, a failed row whose created_at no effect
// message can carry, and still re-runs the others.
func TestRetryRowWithExtremeCreatedAt(t *testing.T) {
	pg, ids := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)
	extreme := insertExtreme(t, pg, "echo", "failed")

	out := retryJSON(t, 1, append(append([]string{}, extreme...), ids["echo-failed"])...)
	r := out.Results
	if len(r) != len(extreme)+1 {
		t.Fatalf("results = %+v", r)
	}
	for i := range extreme {
		if r[i].Outcome != "error" || !strings.Contains(r[i].Error, "cannot be carried by an effect message") {
			t.Errorf("%s: %+v", extremeCreatedAt[i].sql, r[i])
		}
	}
	if last := r[len(r)-1]; last.Outcome != "retried" {
		t.Errorf("the ordinary row: %+v", last)
	}
	if got := len(streamEffects(t, js)); got != 1 {
		t.Errorf("%d messages in the stream, want 1", got)
	}
	marks := rerunMarks(t, pg)
	for _, id := range extreme {
		if marks[id].at != nil {
			t.Errorf("row %s marked re-run though nothing was published", id)
		}
	}
	// Selected by --status failed, they are reported and the rest re-run.
	out = retryJSON(t, 1, "--status", "failed", "--kind", "echo")
	errs, retried := 0, 0
	for _, r := range out.Results {
		switch r.Outcome {
		case "error":
			errs++
		case "retried":
			retried++
		}
	}
	if errs != len(extreme) || retried != 1 {
		t.Errorf("--status failed: results = %+v", out.Results)
	}
}
