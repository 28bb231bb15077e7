package dispatcher

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// BenchmarkDispatch measures the dispatcher alone: b.N effects are stored
// on the stream first, then one dispatcher (echo handler, concurrency 256)
// handles them all, publishing each completion; one op is one effect, from
// delivery to ack. The NATS server runs in this process, so -benchmem's
// allocations include the server's share (the same on both sides of a
// comparison), unless EFFECTS_BENCH_NATS_SERVER runs it in a process of its
// own (testenv.StartBenchNATS): then they are the dispatcher's alone.
func BenchmarkDispatch(b *testing.B) {
	srv := testenv.StartBenchNATS(b)
	_, js := srv.Connect(b)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		msg := nats.NewMsg(effects.Subject("echo"))
		msg.Data = fmt.Appendf(nil, `{"id":"00000000-0000-4000-8000-%012d","kind":"echo","payload":{"i":%d},"created_at":"2026-03-14T09:26:53Z","session_variables":null}`, i, i)
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("ev-%d", i))
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 || i == b.N-1 {
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("publishing effects took over a minute")
			}
		}
	}
	// Completions are counted from the stream's state, not by a consumer,
	// so that no extra consumer's work is measured.
	stream, err := js.Stream(ctx, effects.CompletedStream)
	if err != nil {
		b.Fatal(err)
	}
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	d, err := New(Config{Concurrency: 256}, reg, js, nil, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	natsCPU := srv.CPU()
	start := time.Now()
	go func() { done <- d.Run(runCtx) }()
	for {
		info, err := stream.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.State.Msgs >= uint64(b.N) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "effects/s")
	// CPU per effect (dispatcher, and the NATS server when in this
	// process): steadier than effects/s on a shared machine.
	b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu_us/effect")
	if srv.Separate() {
		b.ReportMetric(float64((srv.CPU()-natsCPU).Nanoseconds())/1e3/float64(b.N), "nats_cpu_us/effect")
	}
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
