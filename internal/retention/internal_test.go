package retention

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// TestStatementsUseThePartialIndexes checks the plans of a pass's
// statements as the completer runs them: prepared, and planned generically
// (PostgreSQL switches a prepared statement to its generic plan after five
// runs). Sequential scans are switched off, so the planner takes an index
// whenever one can serve; a status passed as a parameter could not use the
// partial indexes and would show up here as a Seq Scan.
func TestStatementsUseThePartialIndexes(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pg.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := schema.Migrate(ctx, conn.Conn(), "effects"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off"); err != nil {
		t.Fatal(err)
	}
	table := schema.Table{Name: "effects"}
	for _, status := range Statuses {
		index := map[effects.Status]string{effects.StatusSucceeded: "effects_succeeded_idx", effects.StatusFailed: "effects_failed_idx"}[status]
		for name, sql := range map[string]string{
			"delete": fmt.Sprintf(deleteSQL, table.Quoted(), status),
			"count":  fmt.Sprintf(countSQL, table.Quoted(), status),
			"oldest": fmt.Sprintf(`SELECT min(created_at) FROM %[1]s WHERE status = '%[2]s'`, table.Quoted(), status),
		} {
			stmt := "s_" + name + "_" + string(status)
			if _, err := conn.Exec(ctx, "PREPARE "+stmt+" AS "+sql); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			args := map[string]string{"delete": "(now(), 1000)", "count": "(now())", "oldest": ""}[name]
			rows, err := conn.Query(ctx, "EXPLAIN EXECUTE "+stmt+args)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			plan := strings.Join(lines, "\n")
			if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, index) {
				t.Errorf("%s %s rows: want the plan to use %s without a Seq Scan:\n%s", name, status, index, plan)
			}
		}
	}
}
