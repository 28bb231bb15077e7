package retention_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/retention"
)

// BenchmarkPass measures how fast a pass removes rows: 200k succeeded rows
// past the retention among 50k that are kept, removed in batches of the
// given size. rows/s is the removal rate one completer replica sustains;
// compare it with the rate effects are inserted. With snapshot=held another
// session holds a snapshot older than the pass (a long report), so the
// removed rows' index entries cannot be marked dead during the pass.
func BenchmarkPass(b *testing.B) {
	for _, c := range []struct {
		size int
		held bool
	}{{100, false}, {1000, false}, {5000, false}, {1000, true}} {
		b.Run(fmt.Sprintf("batch=%d/snapshot-held=%v", c.size, c.held), func(b *testing.B) {
			size := c.size
			pool := migrated(b)
			var removed int64
			var elapsed time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				insertMany(b, pool, 200000, rowSpec{"succeeded", 3 * h, 2 * h})
				insertMany(b, pool, 50000, rowSpec{"succeeded", 30 * time.Minute, 30 * time.Minute})
				if _, err := pool.Exec(testCtx(b), "VACUUM ANALYZE effects"); err != nil {
					b.Fatal(err)
				}
				if c.held {
					tx, err := pool.BeginTx(testCtx(b), pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
					if err != nil {
						b.Fatal(err)
					}
					var n int
					if err := tx.QueryRow(testCtx(b), "SELECT count(*) FROM effects WHERE status = 'pending'").Scan(&n); err != nil {
						b.Fatal(err)
					}
					defer func() { _ = tx.Rollback(testCtx(b)) }()
				}
				b.StartTimer()
				start := time.Now()
				res, err := retention.Pass(testCtx(b), pool, effectsTable, retention.Policy{Succeeded: h}, retention.PassOptions{BatchSize: size})
				elapsed += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				removed += res.Removed.Succeeded
			}
			b.ReportMetric(float64(removed)/elapsed.Seconds(), "rows/s")
		})
	}
}
