package completer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// BenchmarkCompleterPipeline measures the whole completer: b.N completions
// waiting in JetStream (as after a burst) are consumed, written in batches
// and acked. completions/s is what one completer sustains on this machine,
// NATS, PostgreSQL and the benchmark sharing its cores.
func BenchmarkCompleterPipeline(b *testing.B) {
	for _, writers := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchmarkPipeline(b, completer.Config{Writers: writers}) })
	}
}

func benchmarkPipeline(b *testing.B, cfg completer.Config) {
	bn := setup(b, setupOpts{noStart: true, cfg: cfg, benchNATS: true})
	rows, err := bn.pool.Query(context.Background(),
		`INSERT INTO effects (kind, payload) SELECT 'echo', '{"n":1}' FROM generate_series(1, $1) RETURNING id::text`, b.N)
	if err != nil {
		b.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	var acks []jetstream.PubAckFuture
	for i, id := range ids {
		data, _ := json.Marshal(succeeded(id, now, `{"status":200,"body":{"ok":true}}`))
		f, err := bn.js.PublishAsync(effects.CompletedSubject("echo"), data)
		if err != nil {
			b.Fatal(err)
		}
		acks = append(acks, f)
		if i%1000 == 999 {
			<-bn.js.PublishAsyncComplete()
		}
	}
	<-bn.js.PublishAsyncComplete()
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatal(err)
		}
	}

	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	cpu, natsCPU := testenv.SelfCPU(), bn.bench.CPU()
	bn.start(b)
	deadline := time.Now().Add(5 * time.Minute)
	for bn.metric(b, "effects_completions_written_total") < float64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %v of %d written", bn.metric(b, "effects_completions_written_total"), b.N)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64((testenv.SelfCPU()-cpu).Nanoseconds())/1e3/float64(b.N), "cpu_us/op")
	if bn.bench.Separate() {
		b.ReportMetric(float64((bn.bench.CPU()-natsCPU).Nanoseconds())/1e3/float64(b.N), "nats_cpu_us/op")
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "completions/s")
	batches := bn.metric(b, "effects_completer_batch_size")
	b.ReportMetric(float64(b.N)/batches, "rows/batch")
	mfs, _ := bn.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "effects_completer_write_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			b.ReportMetric(1000*h.GetSampleSum()/float64(h.GetSampleCount()), "write-ms/batch")
			b.ReportMetric(1000*elapsed.Seconds()/batches, "ms/batch")
		}
	}
}

// BenchmarkCompleterSteady measures the completer under a steady stream of
// completions (5,000/s, as from a busy dispatcher) rather than a backlog:
// batch sizes then depend on how long a writer lingers. Run it with
// -benchtime=30000x; the cost to compare is PostgreSQL's CPU per row (from
// outside) and rows/batch. Linger=0 is the default, off turns lingering off.
func BenchmarkCompleterSteady(b *testing.B) {
	for _, lc := range []struct {
		name   string
		linger time.Duration
	}{{"linger=default", 0}, {"linger=off", completer.NoLinger}} {
		b.Run(lc.name, func(b *testing.B) { benchmarkSteady(b, completer.Config{Linger: lc.linger}, 5000) })
	}
}

func benchmarkSteady(b *testing.B, cfg completer.Config, rate int) {
	bn := setup(b, setupOpts{noStart: true, cfg: cfg})
	rows, err := bn.pool.Query(context.Background(),
		`INSERT INTO effects (kind, payload) SELECT 'echo', '{"n":1}' FROM generate_series(1, $1) RETURNING id::text`, b.N)
	if err != nil {
		b.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	bn.start(b)
	b.ResetTimer()
	start := time.Now()
	// Published in ticks of 1ms, rate/1000 each.
	per := max(1, rate/1000)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := 0; i < len(ids); {
		<-tick.C
		for j := 0; j < per && i < len(ids); j++ {
			data, _ := json.Marshal(succeeded(ids[i], now, `{"status":200,"body":{"ok":true}}`))
			if _, err := bn.js.PublishAsync(effects.CompletedSubject("echo"), data); err != nil {
				b.Fatal(err)
			}
			i++
		}
	}
	<-bn.js.PublishAsyncComplete()
	deadline := time.Now().Add(5 * time.Minute)
	for bn.metric(b, "effects_completions_written_total") < float64(b.N) {
		if time.Now().After(deadline) {
			b.Fatalf("only %v of %d written", bn.metric(b, "effects_completions_written_total"), b.N)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "completions/s")
	b.ReportMetric(float64(b.N)/bn.metric(b, "effects_completer_batch_size"), "rows/batch")
}
