package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// The capacity benchmarks (docs/capacity.md; `make capacity`) measure one
// replica of a service, or the whole pipeline, against three JetStream
// set-ups side by side in one run: a single server (R1), a 3-node cluster
// with R1 streams, and the same cluster with R3 streams. All servers run in
// the benchmark's process, so cpu_us/effect counts the NATS servers' work
// too (three servers' for R3: the cost of replication on one machine);
// PostgreSQL is a separate process and not counted.

type natsSetup struct {
	name            string
	nodes, replicas int
}

var natsSetups = []natsSetup{{"single-R1", 1, 1}, {"cluster-R1", 3, 1}, {"cluster-R3", 3, 3}}

// startNATSSetup starts the servers of s and returns the URL(s) a client
// names, with the streams created at s's replicas.
func startNATSSetup(b *testing.B, s natsSetup) (string, jetstream.JetStream) {
	b.Helper()
	var url string
	if s.nodes == 1 {
		url = testenv.StartNATS(b).URL
	} else {
		url = testenv.StartNATSCluster(b, s.nodes).URLs()
	}
	nc, js, err := natsconn.Connect(url, "capacity-admin", logger(), 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	if err := effects.ApplyStreams(context.Background(), js, effects.StreamOptions{Replicas: s.replicas}); err != nil {
		b.Fatal(err)
	}
	return url, js
}

// publishAll publishes n messages built by msg and waits for every ack.
func publishAll(b *testing.B, js jetstream.JetStream, n int, msg func(i int) *nats.Msg) {
	b.Helper()
	var futures []jetstream.PubAckFuture
	for i := range n {
		f, err := js.PublishMsgAsync(msg(i))
		if err != nil {
			b.Fatal(err)
		}
		futures = append(futures, f)
		if i%1000 == 999 {
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("publishing took over a minute")
			}
		}
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatal(err)
		}
	}
}

// waitStreamMsgs waits until the stream holds n messages.
func waitStreamMsgs(b *testing.B, js jetstream.JetStream, stream string, n int) {
	b.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := js.Stream(ictx, stream)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = s.Info(ictx)
		}
		cancel()
		if err == nil && info.State.Msgs >= uint64(n) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("stream %s: fewer than %d messages after 10 minutes (%v)", stream, n, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkCapacityDispatcher measures one dispatcher replica: b.N echo
// effects are stored first, then one dispatcher (concurrency 256, its own
// connection naming every node) handles them all and publishes each
// completion. effects/s is what one replica sustains when nothing else
// competes for it; completions are counted from the stream's state.
func BenchmarkCapacityDispatcher(b *testing.B) {
	for _, s := range natsSetups {
		b.Run(s.name, func(b *testing.B) {
			url, js := startNATSSetup(b, s)
			publishAll(b, js, b.N, func(i int) *nats.Msg {
				msg := nats.NewMsg(effects.Subject("echo"))
				msg.Data = fmt.Appendf(nil, `{"id":"00000000-0000-4000-8000-%012d","kind":"echo","payload":{"i":%d},"created_at":"2026-03-14T09:26:53Z","session_variables":null}`, i, i)
				msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("ev-%d", i))
				return msg
			})
			nc, djs, err := natsconn.Connect(url, "capacity-dispatcher", logger(), 0)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			reg := effects.NewRegistry()
			reg.Handle("echo", handlers.Echo)
			d, err := dispatcher.New(dispatcher.Config{Concurrency: 256, Streams: effects.StreamOptions{Replicas: s.replicas}},
				reg, djs, logger(), prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			ctx, stop := context.WithCancel(context.Background())
			done := make(chan error, 1)
			b.ResetTimer()
			cpu0, start := cpuTime(), time.Now()
			go func() { done <- d.Run(ctx) }()
			waitStreamMsgs(b, js, effects.CompletedStream, b.N)
			elapsed, cpu := time.Since(start), cpuTime()-cpu0
			b.StopTimer()
			stop()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "effects/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/effect")
		})
	}
}

// BenchmarkCapacityCompleter measures one completer replica: b.N pending
// rows and a succeeded completion for each, stored first; then one
// completer (default batch size and writers) writes them all.
func BenchmarkCapacityCompleter(b *testing.B) {
	for _, s := range natsSetups {
		b.Run(s.name, func(b *testing.B) {
			url, js := startNATSSetup(b, s)
			pg := testenv.StartMigrated(b)
			ctx := context.Background()
			rows, err := pg.Pool.Query(ctx,
				`INSERT INTO effects (kind, payload) SELECT 'echo', '{"n":1}' FROM generate_series(1, $1) RETURNING id::text`, b.N)
			if err != nil {
				b.Fatal(err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			publishAll(b, js, b.N, func(i int) *nats.Msg {
				data, _ := json.Marshal(effects.Completion{EffectID: ids[i], Kind: "echo", Status: effects.StatusSucceeded,
					Attempts: 1, CompletedAt: now, Completion: json.RawMessage(`{"ok":true}`)})
				msg := nats.NewMsg(effects.CompletedSubject("echo"))
				msg.Data = data
				return msg
			})
			nc, cjs, err := natsconn.Connect(url, "capacity-completer", logger(), 0)
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			reg := prometheus.NewRegistry()
			cfg := completer.Config{DatabaseURL: pg.URL, Table: "effects", Streams: effects.StreamOptions{Replicas: s.replicas}}.WithDefaults()
			c, err := completer.New(cfg, pg.Pool, cjs, logger(), reg)
			if err != nil {
				b.Fatal(err)
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			b.ResetTimer()
			cpu0, start := cpuTime(), time.Now()
			go func() { done <- c.Run(runCtx) }()
			deadline := time.Now().Add(10 * time.Minute)
			for testenv.MetricValue(b, reg, "effects_completions_written_total") < float64(b.N) {
				if time.Now().After(deadline) {
					b.Fatalf("%v of %d written after 10 minutes", testenv.MetricValue(b, reg, "effects_completions_written_total"), b.N)
				}
				time.Sleep(5 * time.Millisecond)
			}
			elapsed, cpu := time.Since(start), cpuTime()-cpu0
			b.StopTimer()
			stop()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "completions/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/completion")
		})
	}
}

// BenchmarkCapacityPipeline measures the whole pipeline with one replica of
// each service (table source, dispatcher with the echo handler, completer):
// b.N rows inserted at once, effects/s until the last is final.
func BenchmarkCapacityPipeline(b *testing.B) {
	for _, s := range natsSetups {
		b.Run(s.name, func(b *testing.B) {
			url, _ := startNATSSetup(b, s)
			reg := effects.NewRegistry()
			reg.Handle("echo", handlers.Echo)
			rs := startReplicas(b, url, clusterOptions{registry: reg, replicas: 1, streamReplicas: s.replicas, noAudit: true,
				dispatcher: dispatcher.Config{Concurrency: 256}})
			b.ResetTimer()
			cpu0, start := cpuTime(), time.Now()
			for i := 0; i < b.N; i += 5000 {
				rs.insertRows("echo", i, min(5000, b.N-i))
			}
			rs.waitFinal(10 * time.Minute)
			elapsed, cpu := time.Since(start), cpuTime()-cpu0
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "effects/s")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu_us/effect")
		})
	}
}
