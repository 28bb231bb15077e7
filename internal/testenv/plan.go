package testenv

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/schema"
)

// StartMigrated is [StartPostgres] with the effects table migrated in the
// test's schema.
func StartMigrated(t testing.TB) *Postgres {
	t.Helper()
	pg := StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pg.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := schema.Migrate(ctx, conn.Conn(), "effects"); err != nil {
		t.Fatal(err)
	}
	return pg
}

// StartEffectsTable is [StartMigrated] with the table holding rows pending
// 'echo' rows, analysed: what a test of a statement's plan on a table of
// some size needs.
func StartEffectsTable(t testing.TB, rows int) *Postgres {
	t.Helper()
	pg := StartMigrated(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects (kind) SELECT 'echo' FROM generate_series(1, $1::int)`, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Pool.Exec(ctx, `ANALYZE effects`); err != nil {
		t.Fatal(err)
	}
	return pg
}

// Querier is what [Explain] needs of a pool, connection or transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Explain returns the plan PostgreSQL makes for sql with these argument
// values (EXPLAIN without ANALYZE and costs: nothing runs), a line each.
func Explain(ctx context.Context, t testing.TB, q Querier, sql string, args ...any) string {
	t.Helper()
	rows, err := q.Query(ctx, "EXPLAIN (COSTS OFF) "+sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	var plan strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(&plan, line)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return plan.String()
}
