package reconcile_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/reconcile"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

const h = time.Hour

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// bundle is a migrated table, a JetStream, and (when started) the real
// dispatcher and completer, with a reconciler whose passes the test runs.
type bundle struct {
	pool *pgxpool.Pool
	nats *testenv.NATS
	js   jetstream.JetStream
	reg  *prometheus.Registry
	rc   *reconcile.Reconciler
	dreg *prometheus.Registry // the dispatcher's metrics

	mu    sync.Mutex
	calls map[string]int // handler calls by effect id
}

func setup(t *testing.T) *bundle {
	t.Helper()
	pg := testenv.StartPostgres(t)
	conn, err := pg.Pool.Acquire(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Migrate(testCtx(t), conn.Conn(), "effects"); err != nil {
		t.Fatal(err)
	}
	conn.Release()
	b := &bundle{pool: pg.Pool, reg: prometheus.NewRegistry(), calls: map[string]int{}}
	b.nats = testenv.StartNATS(t)
	_, b.js = b.nats.Connect(t)
	if err := effects.EnsureStreams(testCtx(t), b.js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	b.rc = b.reconciler(t, b.reg)
	return b
}

func (b *bundle) reconciler(t *testing.T, reg prometheus.Registerer) *reconcile.Reconciler {
	t.Helper()
	rc, err := reconcile.New(reconcile.Config{Table: "effects", After: h, BatchSize: 3}, b.pool, b.js, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// run runs f until the test ends.
func run(t *testing.T, what string, f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
}

// startServices starts the completer and a dispatcher handling "echo"
// (counting calls), "flaky" (counting calls; the first asks for a retry in
// an hour) and, when slow is not nil, "slow" (counting calls, then
// waiting for slow to close; started is told of each call).
func (b *bundle) startServices(t *testing.T, slow <-chan struct{}, started chan<- string) {
	t.Helper()
	c, err := completer.New(completer.Config{Table: "effects"}, b.pool, b.js, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	run(t, "completer", c.Run)
	reg := effects.NewRegistry()
	count := func(id string) {
		b.mu.Lock()
		b.calls[id]++
		b.mu.Unlock()
	}
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) {
		count(e.ID)
		return map[string]string{"event_id": e.EventID}, nil
	})
	reg.Handle("flaky", func(_ context.Context, e effects.Effect) (any, error) {
		count(e.ID)
		if b.callsOf(e.ID) == 1 {
			return nil, effects.RetryAfter(h, errors.New("busy, come back later"))
		}
		return nil, nil
	})
	if slow != nil {
		reg.Handle("slow", func(ctx context.Context, e effects.Effect) (any, error) {
			count(e.ID)
			select {
			case started <- e.ID:
			default:
			}
			select {
			case <-slow:
				return nil, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		})
	}
	b.dreg = prometheus.NewRegistry()
	d, err := dispatcher.New(dispatcher.Config{Concurrency: 2, HandlerTimeout: 2 * time.Minute, RetryMax: 2 * h}, reg, b.js, testLogger(t), b.dreg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, "dispatcher", d.Run)
	kinds := []string{"echo", "flaky"}
	if slow != nil {
		kinds = append(kinds, "slow")
	}
	for _, k := range kinds {
		testenv.WaitFor(t, time.Minute, "consumer "+dispatcher.ConsumerName(k), func() bool {
			_, err := b.js.Consumer(testCtx(t), effects.EffectsStream, dispatcher.ConsumerName(k))
			return err == nil
		})
	}
}

func (b *bundle) callsOf(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[id]
}

// insert inserts n pending rows of kind created ago, and returns their ids.
func (b *bundle) insert(t *testing.T, kind string, n int, ago time.Duration) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		err := b.pool.QueryRow(testCtx(t), `
			INSERT INTO effects (kind, payload, created_at)
			VALUES ($1, '{"n":1}', now() - $2::int8 * interval '1 microsecond' + $3::int8 * interval '1 microsecond')
			RETURNING id::text`, kind, ago.Microseconds(), i).Scan(&ids[i])
		if err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// publish publishes the rows' effects as the ingest does (message id = the
// row id).
func (b *bundle) publish(t *testing.T, kind string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		msg := ingest.EffectMsg(id, kind, []byte(`{"n":1}`), time.Now(), id)
		if _, err := b.js.PublishMsg(testCtx(t), msg); err != nil {
			t.Fatal(err)
		}
	}
}

func (b *bundle) status(t *testing.T, id string) string {
	t.Helper()
	var s string
	if err := b.pool.QueryRow(testCtx(t), `SELECT status FROM effects WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func (b *bundle) waitStatus(t *testing.T, want string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		testenv.WaitFor(t, time.Minute, id+" "+want, func() bool { return b.status(t, id) == want })
	}
}

// consumerInfo is the state of a consumer, nil when it does not exist.
func (b *bundle) consumerInfo(t *testing.T, stream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := b.js.Consumer(testCtx(t), stream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info
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
