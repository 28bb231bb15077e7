package completer

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

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

// BenchmarkCompleterWriteParallel measures what one PostgreSQL takes in
// completion writes: `writers` batch statements (500 rows each, as the
// completer writes them) run at once on separate connections, as the
// writers of several completer replicas would, each on rows of its own.
// rows/s is the total; one op is one batch.
func BenchmarkCompleterWriteParallel(b *testing.B) {
	const size = 500
	for _, writers := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
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
			// Each writer takes every writers-th batch.
			ids := insertPending(b, pg, max(b.N, writers)*size)
			batches := len(ids) / size
			pool, err := pgxpool.New(ctx, fmt.Sprintf("%s&pool_max_conns=%d", pg.URL, writers))
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Close()
			completion := json.RawMessage(`{"status":200,"body":{"ok":true}}`)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for k := range writers {
				wg.Go(func() {
					// A writer each, as each completer writer has.
					w := newBatchWriter(pool, schema.Table{Name: "effects"})
					items := make([]item, size)
					rows := make([]*item, size)
					for i := k; i < batches; i += writers {
						for j := range items {
							items[j] = item{id: parseUUID(ids[i*size+j]), completion: completion, comp: effects.Completion{
								Status: effects.StatusSucceeded, Attempts: 1, CompletedAt: time.Now(),
							}}
							rows[j] = &items[j]
						}
						sortByID(rows)
						if err := w.write(ctx, rows); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(batches*size)/time.Since(start).Seconds(), "rows/s")
		})
	}
}
