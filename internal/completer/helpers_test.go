package completer_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// bundle is what a test drives: a migrated table in its own schema, its own
// JetStream, and a completer running on them.
type bundle struct {
	t     testing.TB
	pool  *pgxpool.Pool
	nats  *testenv.NATS // nil with benchNATS
	bench *testenv.BenchNATS
	nc    *nats.Conn
	js    jetstream.JetStream
	reg   *prometheus.Registry
	c     *completer.Completer
	cfg   completer.Config
	table string

	stop func()     // cancels Run
	done chan error // Run's result
}

type setupOpts struct {
	cfg     completer.Config
	pool    *pgxpool.Pool // default: a schema of the test's own in the test database
	noStart bool
	// benchNATS: the NATS server of a benchmark (testenv.StartBenchNATS),
	// in a process of its own when EFFECTS_BENCH_NATS_SERVER is set.
	benchNATS bool
}

func setup(t testing.TB, o setupOpts) *bundle {
	t.Helper()
	b := &bundle{t: t, cfg: o.cfg, pool: o.pool}
	if b.pool == nil {
		b.pool = testenv.StartPostgres(t).Pool
	}
	if b.cfg.Table == "" {
		b.cfg.Table = "effects"
	}
	b.table = b.cfg.Table
	migrateTable(t, b.pool, b.table)

	if o.benchNATS {
		b.bench = testenv.StartBenchNATS(t)
		b.nc, b.js = b.bench.Connect(t)
	} else {
		b.nats = testenv.StartNATS(t)
		b.nc, b.js = b.nats.Connect(t)
	}
	if err := effects.EnsureStreams(ctx(t), b.js, effects.StreamOptions{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	if !o.noStart {
		b.start(t)
	}
	return b
}

func migrateTable(t testing.TB, pool *pgxpool.Pool, table string) {
	t.Helper()
	conn, err := pool.Acquire(ctx(t))
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	defer conn.Release()
	if err := schema.Migrate(ctx(t), conn.Conn(), table); err != nil {
		t.Fatalf("migrate: %v", err)
	}
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

// start creates a completer (with a new registry) and runs it until the
// test ends or b.stop is called.
func (b *bundle) start(t testing.TB) {
	t.Helper()
	b.reg = prometheus.NewRegistry()
	c, err := completer.New(b.cfg, b.pool, b.js, testLogger(t), b.reg)
	if err != nil {
		t.Fatalf("completer.New: %v", err)
	}
	b.c = c
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	b.stop, b.done = cancel, done
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Error("completer did not stop in 60s")
		}
	})
}

// stopAndWait stops Run and returns its result.
func (b *bundle) stopAndWait(t testing.TB, within time.Duration) error {
	t.Helper()
	b.stop()
	select {
	case err := <-b.done:
		b.done <- err // for the cleanup
		return err
	case <-time.After(within):
		t.Fatalf("Run did not return within %s of the stop", within)
		return nil
	}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// insert adds a pending row and returns its id.
func (b *bundle) insert(t testing.TB, kind string) string {
	t.Helper()
	var id string
	err := b.pool.QueryRow(ctx(t), fmt.Sprintf(`INSERT INTO %s (kind, payload) VALUES ($1, '{"n":1}') RETURNING id::text`, quote(b.table)), kind).Scan(&id)
	if err != nil {
		t.Fatalf("insert: %v", err)
	}
	return id
}

func quote(table string) string {
	tb, err := schema.ParseTable(table)
	if err != nil {
		panic(err)
	}
	return tb.Quoted()
}

func succeeded(id string, at time.Time, completion string) effects.Completion {
	return effects.Completion{EffectID: id, Kind: "echo", Status: effects.StatusSucceeded,
		Completion: json.RawMessage(completion), Attempts: 1, CompletedAt: at}
}

func failed(id string, at time.Time, msg string, attempts int) effects.Completion {
	return effects.Completion{EffectID: id, Kind: "echo", Status: effects.StatusFailed,
		Error: &msg, Attempts: attempts, CompletedAt: at}
}

// publish sends completions as any producer would, without a message id so
// that JetStream stores every copy (duplicates are the completer's to
// handle).
func (b *bundle) publish(t testing.TB, comps ...effects.Completion) {
	t.Helper()
	for _, c := range comps {
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		b.publishRaw(t, effects.CompletedSubject(c.Kind), data)
	}
}

func (b *bundle) publishRaw(t testing.TB, subject string, data []byte) {
	t.Helper()
	if _, err := b.js.Publish(ctx(t), subject, data); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

// row is a row's columns the completer writes; NULL reads as "<null>"
// (completion, error) or the zero time.
type row struct {
	Status      string
	Completion  string
	Error       string
	Attempts    int
	CompletedAt time.Time
	XMin        int64 // changes whenever the row is written
}

func (b *bundle) row(t testing.TB, id string) row {
	t.Helper()
	var r row
	err := b.pool.QueryRow(ctx(t), fmt.Sprintf(`SELECT status, coalesce(completion::text, '<null>'), coalesce(error, '<null>'), attempts,
		        coalesce(completed_at, '0001-01-01T00:00:00Z'), xmin::text::int8 FROM %s WHERE id = $1`, quote(b.table)), id).
		Scan(&r.Status, &r.Completion, &r.Error, &r.Attempts, &r.CompletedAt, &r.XMin)
	if err != nil {
		t.Fatalf("row %s: %v", id, err)
	}
	return r
}

func (b *bundle) consumerInfo(t testing.TB) *jetstream.ConsumerInfo {
	t.Helper()
	cons, err := b.js.Consumer(ctx(t), effects.CompletedStream, completer.ConsumerName)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	info, err := cons.Info(ctx(t))
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	return info
}

// waitSettled waits until the consumer has delivered every message of the
// stream and has none waiting for an ack: each was acked or terminated.
func (b *bundle) waitSettled(t testing.TB) *jetstream.ConsumerInfo {
	t.Helper()
	var info *jetstream.ConsumerInfo
	testenv.WaitFor(t, 30*time.Second, "every completion acked", func() bool {
		cons, err := b.js.Consumer(ctx(t), effects.CompletedStream, completer.ConsumerName)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return false // the completer has not started yet
		}
		if err != nil {
			t.Fatalf("consumer: %v", err)
		}
		if info, err = cons.Info(ctx(t)); err != nil {
			t.Fatalf("consumer info: %v", err)
		}
		s, err := b.js.Stream(ctx(t), effects.CompletedStream)
		if err != nil {
			t.Fatal(err)
		}
		last := s.CachedInfo().State.LastSeq
		return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == last
	})
	return info
}

// metric is the value of a counter, or the sample count of a histogram,
// with the given labels.
func (b *bundle) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	return testenv.MetricValue(t, b.reg, name, labels...)
}

func isNotMigrated(err error) bool { return errors.Is(err, schema.ErrNotMigrated) }

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }
