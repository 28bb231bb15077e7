package completer

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// BenchmarkCompleterWrite measures the batch statement alone: b.N batches,
// each completing batch-size pending rows of a table that already holds
// 100k completed rows (so index lookups are not of a toy table). rows/s is
// the completer's ceiling set by PostgreSQL.
func BenchmarkCompleterWrite(b *testing.B) {
	for _, size := range []int{100, 500, 2000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			pg := testenv.StartPostgres(b)
			ctx := context.Background()
			conn, err := pg.Pool.Acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := schema.Migrate(ctx, conn.Conn(), "effects"); err != nil {
				b.Fatal(err)
			}
			conn.Release()
			_, err = pg.Pool.Exec(ctx, `INSERT INTO effects (kind, status, completed_at, completion)
				SELECT 'echo', 'succeeded', now(), '{"old":true}' FROM generate_series(1, 100000)`)
			if err != nil {
				b.Fatal(err)
			}
			ids := insertPending(b, pg, b.N*size)
			w := newBatchWriter(pg.Pool, schema.Table{Name: "effects"})
			items := make([]item, size)
			rows := make([]*item, size)
			completion := json.RawMessage(`{"status":200,"body":{"ok":true}}`)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				for j := range items {
					items[j] = item{id: parseUUID(ids[i*size+j]), completion: completion, comp: effects.Completion{
						Status: effects.StatusSucceeded, Attempts: 1, CompletedAt: time.Now(),
					}}
					rows[j] = &items[j]
				}
				sortByID(rows)
				if err := w.write(ctx, rows); err != nil {
					b.Fatal(err)
				}
				if rows[0].res.outcome != written {
					b.Fatalf("outcome %d", rows[0].res.outcome)
				}
			}
			b.ReportMetric(float64(b.N*size)/time.Since(start).Seconds(), "rows/s")
		})
	}
}

func insertPending(b *testing.B, pg *testenv.Postgres, n int) []string {
	b.Helper()
	rows, err := pg.Pool.Query(context.Background(),
		`INSERT INTO effects (kind, payload) SELECT 'echo', '{"n":1}' FROM generate_series(1, $1) RETURNING id::text`, n)
	if err != nil {
		b.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	return ids
}
