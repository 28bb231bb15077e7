package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

// A re-run keeps a scheduled effect's time: a failed effect whose run_at
// passed is published at once carrying its run_at; one whose run_at is
// still ahead is not published but made to wait for the scheduler again
// (pending, not published); a pending one still waiting is left as it is.
// list and show say when each is due.
func TestRetryKeepsTheTime(t *testing.T) {
	pg, _ := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)
	ctx := context.Background()
	ids := map[string]string{}
	var dueAt time.Time
	for name, sql := range map[string]string{
		"due":     `INSERT INTO effects (kind, status, created_at, run_at) VALUES ('remind', 'failed', now() - interval '2 hours', now() - interval '1 hour') RETURNING id::text, run_at`,
		"ahead":   `INSERT INTO effects (kind, status, run_at, published_at) VALUES ('remind', 'failed', now() + interval '1 day', now()) RETURNING id::text, run_at`,
		"waiting": `INSERT INTO effects (kind, run_at) VALUES ('remind', now() + interval '1 day') RETURNING id::text, run_at`,
	} {
		var id string
		var at time.Time
		if err := pg.Pool.QueryRow(ctx, sql).Scan(&id, &at); err != nil {
			t.Fatal(err)
		}
		ids[name] = id
		if name == "due" {
			dueAt = at
		}
	}

	out := retryJSON(t, 0, ids["due"], ids["ahead"], ids["waiting"])
	want := []string{"retried", "waiting", "waiting"}
	for i, r := range out.Results {
		if r.Outcome != want[i] {
			t.Errorf("%s: outcome %q, want %q (%+v)", r.ID, r.Outcome, want[i], r)
		}
	}
	msgs := streamEffects(t, js)
	if len(msgs) != 1 {
		t.Fatalf("%d messages published, want only the due effect's", len(msgs))
	}
	var e effects.Effect
	if err := json.Unmarshal(msgs[0].Data, &e); err != nil {
		t.Fatal(err)
	}
	if e.ID != ids["due"] || !e.RunAt.Equal(dueAt) {
		t.Errorf("published %s with run_at %s, want %s with %s", e.ID, e.RunAt, ids["due"], dueAt)
	}
	for name, wantStatus := range map[string]string{"ahead": "pending", "waiting": "pending"} {
		var status string
		var published, marked bool
		if err := pg.Pool.QueryRow(ctx, `SELECT status, published_at IS NOT NULL, rerun_requested_at IS NOT NULL FROM effects WHERE id = $1`,
			ids[name]).Scan(&status, &published, &marked); err != nil {
			t.Fatal(err)
		}
		if status != wantStatus || published || marked != (name == "ahead") {
			t.Errorf("%s: status %s, published %v, re-run recorded %v; want %s, waiting for the scheduler", name, status, published, marked, wantStatus)
		}
	}

	code, text, _ := runEffects("list", "--kind", "remind")
	if code != 0 || !strings.Contains(text, "RUN AT") || strings.Count(text, dueAt.UTC().Format(time.RFC3339)) != 1 {
		t.Errorf("list (exit %d):\n%s", code, text)
	}
	code, text, _ = runEffects("show", ids["waiting"])
	if code != 0 || !strings.Contains(text, "run at:") || !strings.Contains(text, "(waiting in the table)") ||
		!strings.Contains(text, "it is scheduled and waits in the table") {
		t.Errorf("show (exit %d):\n%s", code, text)
	}
}
