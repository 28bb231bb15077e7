package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// BenchmarkEndToEndTable is BenchmarkEndToEnd with the table source instead
// of the webhook: rows inserted in batches of 500 are read by one ingest
// (EFFECTS_SOURCE=table, default batch size and workers), handled by echo
// and completed in their rows. Same measure: effects/s from the first insert
// to the last row written, and completed_at - created_at per row.
func BenchmarkEndToEndTable(b *testing.B) {
	reg := effects.NewRegistry()
	reg.Handle("echo", handlers.Echo)
	p := startPipeline(b, options{registry: reg, dispatcher: dispatcher.Config{Concurrency: 256}, natsURL: benchNATSURL(b), tableSources: 1})
	n := *benchEffects
	ctx := context.Background()

	for b.Loop() {
		if _, err := p.pg.Pool.Exec(ctx, `TRUNCATE effects`); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		const batch = 500
		for i := 0; i < n; i += batch {
			if _, err := p.pg.Pool.Exec(ctx, `INSERT INTO effects (kind, payload)
				SELECT 'echo', jsonb_build_object('i', g, 'to', 'ops@example.com') FROM generate_series($1::int, $2::int) g`,
				i, min(i+batch, n)-1); err != nil {
				b.Fatal(err)
			}
		}
		inserted := time.Since(start)
		waitAllDone(b, p, start, n)
		elapsed := time.Since(start)
		b.Logf("rows inserted after %s", inserted.Round(time.Millisecond))

		var p50, p90, p99 float64
		var failed int
		if err := p.pg.Pool.QueryRow(ctx, `SELECT
				percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)),
				percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)),
				percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)),
				count(*) FILTER (WHERE status <> 'succeeded')
			FROM effects`).Scan(&p50, &p90, &p99, &failed); err != nil {
			b.Fatal(err)
		}
		if failed != 0 {
			b.Fatalf("%d effects did not succeed", failed)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "effects/s")
		b.ReportMetric(p50*1000, "p50_ms")
		b.ReportMetric(p90*1000, "p90_ms")
		b.ReportMetric(p99*1000, "p99_ms")
		b.Logf("table source: %d effects in %s: %.0f effects/s, latency p50 %.1fms p90 %.1fms p99 %.1fms",
			n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), p50*1000, p90*1000, p99*1000)
	}
}
