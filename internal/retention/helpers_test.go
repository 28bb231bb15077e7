package retention_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// migrated returns a pool on a schema of the test's own holding a migrated
// effects table.
func migrated(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pg := testenv.StartPostgres(t)
	conn, err := pg.Pool.Acquire(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := schema.Migrate(testCtx(t), conn.Conn(), "effects"); err != nil {
		t.Fatal(err)
	}
	return pg.Pool
}

var effectsTable = schema.Table{Name: "effects"}

// rowSpec is a row to insert: status, and ages (before now) of created_at
// and completed_at; a zero completedAgo leaves completed_at NULL.
type rowSpec struct {
	status                   string
	createdAgo, completedAgo time.Duration
}

// insertRows inserts rows and returns their ids in order.
func insertRows(t testing.TB, pool *pgxpool.Pool, rows ...rowSpec) []string {
	t.Helper()
	ids := make([]string, len(rows))
	for i, r := range rows {
		err := pool.QueryRow(testCtx(t), `
			INSERT INTO effects (kind, status, created_at, completed_at)
			VALUES ('echo', $1, now() - $2::int8 * interval '1 microsecond',
			        CASE WHEN $3::int8 = 0 THEN NULL ELSE now() - $3::int8 * interval '1 microsecond' END)
			RETURNING id::text`, r.status, r.createdAgo.Microseconds(), r.completedAgo.Microseconds()).Scan(&ids[i])
		if err != nil {
			t.Fatalf("insert %+v: %v", r, err)
		}
	}
	return ids
}

// insertMany inserts n rows of one kind in one statement, each a
// microsecond newer than the one before.
func insertMany(t testing.TB, pool *pgxpool.Pool, n int, r rowSpec) []string {
	t.Helper()
	rows, err := pool.Query(testCtx(t), `
		INSERT INTO effects (kind, status, created_at, completed_at)
		SELECT 'echo', $1, now() - $2::int8 * interval '1 microsecond' + g * interval '1 microsecond',
		       CASE WHEN $3::int8 = 0 THEN NULL ELSE now() - $3::int8 * interval '1 microsecond' + g * interval '1 microsecond' END
		  FROM generate_series(1, $4) g
		RETURNING id::text`, r.status, r.createdAgo.Microseconds(), r.completedAgo.Microseconds(), n)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// remaining is the set of ids in the table.
func remaining(t testing.TB, pool *pgxpool.Pool) map[string]bool {
	t.Helper()
	rows, err := pool.Query(testCtx(t), `SELECT id::text FROM effects`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, id := range ids {
		out[id] = true
	}
	return out
}

func countRows(t testing.TB, pool *pgxpool.Pool, where string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(testCtx(t), "SELECT count(*) FROM effects WHERE "+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
