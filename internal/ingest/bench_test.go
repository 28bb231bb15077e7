package ingest_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

const placeholderID = "00000000-0000-4000-8000-000000000000"

// benchBodies makes Hasura bodies that differ in event and row id, so that
// JetStream stores every one (a duplicate is cheaper and would flatter).
type benchBodies struct {
	template       []byte
	eventAt, rowAt int
	n              atomic.Uint64
}

func newBenchBodies() *benchBodies {
	tmpl := rawEvent(placeholderID, "INSERT", rawRow(placeholderID, "bench", `{"RATESET": 4512, "note": "a typical small payload"}`))
	first := bytes.Index(tmpl, []byte(placeholderID))
	second := first + 1 + bytes.Index(tmpl[first+1:], []byte(placeholderID))
	return &benchBodies{template: tmpl, eventAt: first, rowAt: second}
}

// next writes a fresh body into buf.
func (bb *benchBodies) next(buf []byte) []byte {
	buf = append(buf[:0], bb.template...)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], bb.n.Add(1))
	// The last 12 hex digits of each UUID: event and row ids differ in
	// their 4th group, which stays "8000" for the event and becomes "9000"
	// for the row.
	hex.Encode(buf[bb.eventAt+24:bb.eventAt+36], n[2:])
	hex.Encode(buf[bb.rowAt+24:bb.rowAt+36], n[2:])
	buf[bb.rowAt+19] = '9'
	return buf
}

// benchSetup is setup with the NATS server of a benchmark: in this process,
// or in its own with EFFECTS_BENCH_NATS_SERVER set (testenv.StartBenchNATS),
// which leaves -benchmem's allocations the ingest's alone.
func benchSetup(b *testing.B) (*testBundle, *testenv.BenchNATS) {
	server := testenv.StartBenchNATS(b)
	nc, js := server.Connect(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	return newBundle(b, nil, nc, js), server
}

// reportCPU starts counting CPU time; the function it returns reports it
// per op: this process's (cpu_us/op) and, when the NATS server runs in a
// process of its own, the server's (nats_cpu_us/op).
func reportCPU(b *testing.B, server *testenv.BenchNATS) func() {
	self, nats := testenv.SelfCPU(), server.CPU()
	return func() {
		n := float64(b.N)
		b.ReportMetric(float64((testenv.SelfCPU()-self).Nanoseconds())/1e3/n, "cpu_us/op")
		if server.Separate() {
			b.ReportMetric(float64((server.CPU()-nats).Nanoseconds())/1e3/n, "nats_cpu_us/op")
		}
	}
}

// BenchmarkIngest drives the handler directly, in parallel, against an
// in-process NATS: the ingest's own cost per effect plus the JetStream round
// trip, without HTTP's.
func BenchmarkIngest(b *testing.B) {
	bundle, server := benchSetup(b)
	bodies := newBenchBodies()
	b.SetParallelism(50) // with 2 cores, about the 100 deliveries Hasura keeps in flight
	b.ReportAllocs()
	defer reportCPU(b, server)()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var buf []byte
		for pb.Next() {
			buf = bodies.next(buf)
			req := httptest.NewRequest(http.MethodPost, ingest.EventsPath, bytes.NewReader(buf))
			req.Header.Set(ingest.SecretHeader, testSecret)
			rec := httptest.NewRecorder()
			bundle.handler.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Errorf("status %d: %s", rec.Code, rec.Body)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "effects/s")
}

// BenchmarkIngestHTTP goes through a real listener and keep-alive
// connections, as Hasura's deliveries do.
func BenchmarkIngestHTTP(b *testing.B) {
	bundle, server := benchSetup(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- bundle.srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			b.Error(err)
		}
	}()
	select {
	case <-bundle.srv.StreamsReady():
	case <-time.After(10 * time.Second):
		b.Fatal("streams not ready")
	}
	url := "http://" + ln.Addr().String() + ingest.EventsPath
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 200}}
	defer client.CloseIdleConnections()
	bodies := newBenchBodies()

	b.SetParallelism(50)
	b.ReportAllocs()
	defer reportCPU(b, server)()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var buf []byte
		for pb.Next() {
			buf = bodies.next(buf)
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(buf))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set(ingest.SecretHeader, testSecret)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "effects/s")
}
