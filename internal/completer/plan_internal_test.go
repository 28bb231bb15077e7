package completer

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

// TestWritePlanProbesThePrimaryKey: planned with a real batch's values (as
// the first runs of a prepared statement are), the batch statement finds its
// rows through the primary key, not by scanning the table. With the arrays
// given to unnest directly, the planner knew the batch's length and, on a
// table of 20,000 rows, scanned and hashed all of it for 400 completions.
func TestWritePlanProbesThePrimaryKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pg := testenv.StartEffectsTable(t, 20000)
	table, err := schema.ParseTable("effects")
	if err != nil {
		t.Fatal(err)
	}
	w := newBatchWriter(nil, table)

	const n = 400
	var ids [][16]byte
	rows, err := pg.Pool.Query(ctx, `SELECT id FROM effects ORDER BY id LIMIT $1`, n)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id [16]byte
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	statuses, completions, errs := make([]string, n), make([][]byte, n), make([]*string, n)
	attempts, completedAt := make([]int32, n), make([]time.Time, n)
	for i := range n {
		statuses[i], completions[i], attempts[i], completedAt[i] = "succeeded", []byte(`{"ok":true}`), 1, time.Now()
	}

	// EXPLAIN without ANALYZE: planned with these values, nothing written.
	plan := testenv.Explain(ctx, t, pg.Pool, w.sql, ids, statuses, completions, errs, attempts, completedAt)
	if strings.Contains(plan, "Seq Scan on effects e") || !strings.Contains(plan, "Index Scan using effects_pkey on effects e") {
		t.Fatalf("the batch statement does not probe the primary key per completion:\n%s", plan)
	}
}
