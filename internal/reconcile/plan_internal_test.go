package reconcile

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/testenv"
)

// The scheduler's poll and overdue gauge read the waiting index, and the
// reconciler's claim the due index (migration 008), on a table where most
// pending rows wait for next week and were inserted before the others: on
// the created_at index each would read past every waiting row.
func TestPlansReadTheScheduleIndexes(t *testing.T) {
	pg := testenv.StartEffectsTable(t, 20000)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects (kind, created_at, run_at)
		SELECT 'echo', now() - interval '1 day', now() + interval '7 days' + g * interval '1 ms' FROM generate_series(1, 20000) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Pool.Exec(ctx, `ANALYZE effects`); err != nil {
		t.Fatal(err)
	}
	_, js := testenv.StartNATS(t).Connect(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := NewScheduler(ScheduleConfig{Table: "effects"}, pg.Pool, js, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Table: "effects", After: time.Hour}, pg.Pool, js, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, sql, index string
		args             []any
	}{
		{"scheduler claim", s.claimSQL, "effects_waiting_idx", []any{500}},
		{"waiting count", s.countSQL, "effects_waiting_idx", nil},
		{"reconciler claim", r.claimSQL, "effects_due_idx", []any{time.Hour.Microseconds(), 100, []string{}, false}},
	} {
		plan := testenv.Explain(ctx, t, pg.Pool, c.sql, c.args...)
		if !strings.Contains(plan, c.index) {
			t.Errorf("%s does not read %s:\n%s", c.name, c.index, plan)
		}
	}
}
