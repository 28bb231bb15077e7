package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

var (
	benchEffects     = flag.Int("effects", 20000, "effects per end-to-end benchmark run")
	benchConcurrency = flag.Int("posters", 100, "concurrent webhook deliveries (Hasura's default pool is 100)")
	benchNATS        = flag.String("nats", "", "URL of a NATS server to run against instead of an in-process one; needs -nats-delete-streams")
	benchNATSDelete  = flag.Bool("nats-delete-streams", false, "agree that the benchmark deletes the EFFECTS and EFFECTS_COMPLETED streams of the -nats server")
)

// benchNATSURL is -nats, refused unless -nats-delete-streams says that its
// streams may be deleted: pointed at a shared server by mistake, the
// benchmark would otherwise wipe its effects unannounced.
func benchNATSURL(b *testing.B) string {
	if *benchNATS != "" && !*benchNATSDelete {
		b.Fatalf("-nats %s: the benchmark deletes the EFFECTS and EFFECTS_COMPLETED streams of that server; "+
			"add -nats-delete-streams if that is what you want (make bench-e2e BENCHE2EFLAGS='-nats <url> -nats-delete-streams')", *benchNATS)
	}
	return *benchNATS
}

// BenchmarkEndToEnd measures the whole contract on this machine: rows are
// inserted into PostgreSQL while, at the same time, each is POSTed to the
// ingest in Hasura's format at concurrency 100, handled by the echo handler,
// and its completion written back to its row. It reports effects/s from the
// first insert to the last row written, and the percentiles of completed_at
// - created_at per row.
func BenchmarkEndToEnd(b *testing.B) {
	reg := effects.NewRegistry()
	reg.Handle("echo", handlers.Echo)
	p := startPipeline(b, options{registry: reg, dispatcher: dispatcher.Config{Concurrency: 256}, natsURL: benchNATSURL(b)})
	n := *benchEffects
	ctx := context.Background()

	for b.Loop() {
		if _, err := p.pg.Pool.Exec(ctx, `TRUNCATE effects`); err != nil {
			b.Fatal(err)
		}
		rows := make(chan []byte, 4096)
		cpuStart := cpuTime()
		start := time.Now()
		var wg sync.WaitGroup
		// The producer: rows inserted in batches, as an application would.
		wg.Add(1)
		produced := make(chan time.Duration, 1)
		go func() {
			defer wg.Done()
			defer close(rows)
			defer func() { produced <- time.Since(start) }()
			const batch = 500
			for i := 0; i < n; i += batch {
				r, err := p.pg.Pool.Query(ctx, `INSERT INTO effects (kind, payload)
					SELECT 'echo', jsonb_build_object('i', g, 'to', 'ops@example.com') FROM generate_series($1::int, $2::int) g
					RETURNING row_to_json(effects)::text`, i, min(i+batch, n)-1)
				if err != nil {
					b.Error(err)
					return
				}
				// The statement commits when its last row has been read:
				// hand the rows on only then. A row POSTed before its
				// INSERT commits can complete before it is visible; the
				// completer then drops the completion as unknown and the
				// run never ends.
				var batchRows [][]byte
				for r.Next() {
					var row []byte
					if err := r.Scan(&row); err != nil {
						b.Error(err)
						return
					}
					batchRows = append(batchRows, row)
				}
				r.Close()
				if err := r.Err(); err != nil {
					b.Error(err)
					return
				}
				for _, row := range batchRows {
					rows <- row
				}
			}
		}()
		// Hasura: up to 100 deliveries at once.
		for w := 0; w < *benchConcurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var body bytes.Buffer
				for row := range rows {
					body.Reset()
					eventID := fmt.Sprintf("b%07d-0000-4000-8000-%012d", w, p.events.Add(1))
					fmt.Fprintf(&body, `{"id":%q,"created_at":%q,"trigger":{"name":"effects_dispatch"},"table":{"schema":"public","name":"effects"},"event":{"op":"INSERT","session_variables":null,"trace_context":null,"data":{"old":null,"new":%s}},"delivery_info":{"current_retry":0,"max_retries":5}}`,
						eventID, time.Now().UTC().Format("2006-01-02T15:04:05.999999"), row)
					req, _ := http.NewRequest(http.MethodPost, p.url, bytes.NewReader(body.Bytes()))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("X-Effects-Secret", secret)
					resp, err := p.client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("ingest answered %d", resp.StatusCode)
						return
					}
				}
			}()
		}
		posted := make(chan time.Duration, 1)
		go func() { wg.Wait(); posted <- time.Since(start) }()
		// Done when every row has its outcome.
		insertedAfter := <-produced
		waitAllDone(b, p, start, n)
		elapsed := time.Since(start)
		cpu := cpuTime() - cpuStart
		b.Logf("rows inserted after %s, all ingested after %s", insertedAfter.Round(time.Millisecond), (<-posted).Round(time.Millisecond))

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
		// CPU of this process (ingest, dispatcher, completer, NATS server and
		// the load generator; not PostgreSQL) per effect: steadier than
		// effects/s on a shared machine.
		b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu_us/effect")
		b.ReportMetric(p50*1000, "p50_ms")
		b.ReportMetric(p90*1000, "p90_ms")
		b.ReportMetric(p99*1000, "p99_ms")
		b.Logf("%d effects in %s: %.0f effects/s, latency p50 %.1fms p90 %.1fms p99 %.1fms",
			n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), p50*1000, p90*1000, p99*1000)
	}
}

// waitAllDone waits until no row is pending any more; call it once all n
// rows are inserted. It counts the pending rows, which the pending partial
// index holds (an index-only scan over a shrinking set), every 50 ms: the
// sequential scan of count(*) WHERE status <> 'pending' every 20 ms it
// replaces cost 8-10 µs of PostgreSQL's CPU per effect.
func waitAllDone(b *testing.B, p *pipeline, start time.Time, n int) {
	b.Helper()
	for {
		var pending int
		if err := p.pg.Pool.QueryRow(context.Background(), `SELECT count(*) FROM effects WHERE status = 'pending'`).Scan(&pending); err != nil {
			b.Fatal(err)
		}
		if pending == 0 {
			return
		}
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("%d of %d effects still pending after 5 minutes", pending, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
