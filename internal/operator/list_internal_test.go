package operator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// TestPlansReadThePartialIndexes: the newest rows, with or without a kind,
// are read backwards from each status's partial index, never by sorting the
// whole table, and the open rows are counted through their indexes (the
// console asks for both every few seconds). One ORDER BY created_at over
// the table planned a sequential scan and a sort of all 20,000 rows.
func TestPlansReadThePartialIndexes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pg := testenv.StartEffectsTable(t, 20000)
	// Most rows final, at times spread over a day (the rows were inserted
	// in one statement, at one now()).
	if _, err := pg.Pool.Exec(ctx, `UPDATE effects SET created_at = now() - random() * interval '1 day',
		status = CASE WHEN random() < 0.05 THEN 'pending' WHEN random() < 0.02 THEN 'cancelled'
		              WHEN random() < 0.9 THEN 'succeeded' ELSE 'failed' END`); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Pool.Exec(ctx, `ANALYZE effects`); err != nil {
		t.Fatal(err)
	}
	table, err := schema.ParseTable("effects")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		statuses []effects.Status
		kind     *string
	}{
		{Statuses, nil},
		{Statuses, new("echo")},
		{[]effects.Status{effects.StatusFailed}, nil},
	} {
		plan := testenv.Explain(ctx, t, pg.Pool, listSQL(table, tc.statuses), tc.kind, nil, 50, nil)
		if strings.Contains(plan, "Seq Scan") {
			t.Errorf("statuses %v: the list scans the table:\n%s", tc.statuses, plan)
		}
		for _, st := range tc.statuses {
			if !strings.Contains(plan, "Index Scan Backward using effects_"+string(st)+"_idx") {
				t.Errorf("statuses %v: %s rows not read backwards from their index:\n%s", tc.statuses, st, plan)
			}
		}
	}
	// Pending rows through either of their partial indexes: created_at's,
	// or the key's ((kind, key) WHERE status = 'pending', migration 005).
	if plan := testenv.Explain(ctx, t, pg.Pool, countOpenSQL(table)); strings.Contains(plan, "Seq Scan") ||
		!(strings.Contains(plan, "effects_pending_idx") || strings.Contains(plan, "effects_key_idx")) ||
		!strings.Contains(plan, "effects_failed_idx") || !strings.Contains(plan, "effects_cancel") {
		t.Errorf("the counts of pending, failed and cancelled rows do not read their indexes:\n%s", plan)
	}
}
