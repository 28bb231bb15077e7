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

// TestStatementsUseIndexes checks the plans of a pass's statements as the
// completer runs them: prepared, and planned generically (PostgreSQL
// switches a prepared statement to its generic plan after five runs), on a
// table with statistics. A status passed as a parameter could not use the
// partial indexes, and a DELETE ... WHERE id IN (subquery) was planned as a
// join with a sequential scan of the whole table; both would show up here
// as a Seq Scan.
func TestStatementsUseIndexes(t *testing.T) {
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
	_, err = conn.Exec(ctx, `
		INSERT INTO effects (kind, status, created_at, completed_at)
		SELECT 'echo', CASE WHEN g % 10 = 0 THEN 'failed' WHEN g % 10 = 1 THEN 'pending' WHEN g % 100 = 2 THEN 'cancelled' ELSE 'succeeded' END,
		       now() - interval '3 hours' + g * interval '10 milliseconds', now() - interval '2 hours'
		  FROM generate_series(1, 30000) g;
		ANALYZE effects;
		SET plan_cache_mode = force_generic_plan`)
	if err != nil {
		t.Fatal(err)
	}
	table := schema.Table{Name: "effects"}
	for _, status := range Statuses {
		index := map[effects.Status]string{effects.StatusSucceeded: "effects_succeeded_idx", effects.StatusFailed: "effects_failed_idx",
			effects.StatusCancelled: "effects_cancelled_idx"}[status]
		for _, st := range []struct {
			name, sql, args string
			// forceIndex switches sequential scans off: for the reads
			// that count most rows of a status a scan may be cheaper,
			// and what matters is that the index can serve them.
			forceIndex bool
		}{
			{"delete", fmt.Sprintf(deleteSQL, table.Quoted(), status), "(now() - interval '1 hour', 1000, '-infinity')", false},
			{"count", fmt.Sprintf(countSQL, table.Quoted(), status), "(now() - interval '1 hour')", true},
			{"oldest", fmt.Sprintf(oldestSQL, table.Quoted(), status), "", false},
		} {
			if _, err := conn.Exec(ctx, fmt.Sprintf("SET enable_seqscan = %v", !st.forceIndex)); err != nil {
				t.Fatal(err)
			}
			stmt := "s_" + st.name + "_" + string(status)
			if _, err := conn.Exec(ctx, "PREPARE "+stmt+" AS "+st.sql); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			rows, err := conn.Query(ctx, "EXPLAIN EXECUTE "+stmt+st.args)
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			plan := strings.Join(lines, "\n")
			if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, index) {
				t.Errorf("%s %s rows: want the plan to use %s without a Seq Scan:\n%s", st.name, status, index, plan)
			}
			if st.name == "delete" && !strings.Contains(plan, "effects_pkey") {
				t.Errorf("delete %s rows: want the rows found by primary key:\n%s", status, plan)
			}
		}
	}
}
