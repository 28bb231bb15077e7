package control_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// env is one test's pipeline minus the ingest: a migrated table, JetStream,
// a completer with the controls' syncer, and the dispatchers the test
// starts, each on a NATS connection of its own (as separate processes
// would be). Effects are inserted as rows and published as the ingest
// publishes them.
type env struct {
	t     *testing.T
	pg    *testenv.Postgres
	nats  *testenv.NATS
	js    jetstream.JetStream
	table schema.Table
	ctl   *control.Controller
	// reg is the completer's registry (its metrics and the syncer's).
	reg  *prometheus.Registry
	runs *recorder
}

// syncInterval is the completer's control sync in the tests: short, so
// that a bucket lost is filled again quickly.
const syncInterval = 200 * time.Millisecond

func logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func setup(t *testing.T) *env {
	t.Helper()
	return setupWith(t, true)
}

// setupWith is setup; without syncing the completer does not run the
// controls' syncer (the test runs e.sync itself).
func setupWith(t *testing.T, syncing bool) *env {
	t.Helper()
	e := &env{t: t, pg: testenv.StartMigrated(t), nats: testenv.StartNATS(t), reg: prometheus.NewRegistry(), runs: newRecorder()}
	e.table = schema.Table{Name: "effects"}
	_, e.js = e.nats.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, e.js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	e.ctl = control.New(e.pg.Pool, e.js, e.table, control.Options{Wait: 30 * time.Second, Logger: logger()})
	e.startCompleter(syncing)
	if !syncing {
		e.sync()
	}
	return e
}

// sync runs one pass of the controls' syncer.
func (e *env) sync() control.SyncResult {
	e.t.Helper()
	res, err := control.NewSyncer(e.pg.Pool, e.js, e.table, control.SyncOptions{Logger: logger()}).Once(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}

// startCompleter runs the completer, and with syncing the controls' syncer,
// until the test ends.
func (e *env) startCompleter(syncing bool) {
	t := e.t
	_, js := e.nats.Connect(t)
	c, err := completer.New(completer.Config{Table: "effects"}, e.pg.Pool, js, logger(), e.reg)
	if err != nil {
		t.Fatal(err)
	}
	s := control.NewSyncer(e.pg.Pool, js, e.table, control.SyncOptions{Logger: logger()})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.Run(ctx) })
	if syncing {
		wg.Go(func() {
			if err := s.Run(ctx, syncInterval, e.reg); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// disp is a running dispatcher.
type disp struct {
	d    *dispatcher.Dispatcher
	reg  *prometheus.Registry
	stop func()
}

func testConfig() dispatcher.Config {
	return dispatcher.Config{
		Concurrency:    4,
		HandlerTimeout: 2 * time.Second,
		// The least the dispatcher allows: what a NATS restart drops from
		// its pull buffer comes back after it.
		AckWait:         17 * time.Second,
		MaxAttempts:     5,
		RetryBase:       10 * time.Millisecond,
		RetryMax:        time.Minute,
		ShutdownTimeout: 3 * time.Second,
	}
}

// dispatcher starts a dispatcher of reg's kinds, with the controls, on a
// connection of its own; it waits until it is ready (the controls read).
func (e *env) dispatcher(reg *effects.Registry) *disp {
	e.t.Helper()
	return e.dispatcherWith(testConfig(), reg)
}

func (e *env) dispatcherWith(cfg dispatcher.Config, reg *effects.Registry) *disp {
	e.t.Helper()
	_, js := e.nats.Connect(e.t)
	p := &disp{reg: prometheus.NewRegistry()}
	d, err := dispatcher.New(cfg, reg, js, logger(), p.reg, dispatcher.WithControls())
	if err != nil {
		e.t.Fatal(err)
	}
	p.d = d
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.Run(ctx); err != nil {
			e.t.Error(err)
		}
	}()
	var once sync.Once
	p.stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(p.stop)
	testenv.WaitFor(e.t, 30*time.Second, "the dispatcher ready", func() bool { return d.Ready(ctx) == nil })
	return p
}

func (p *disp) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return testenv.MetricValue(t, p.reg, name, labels...)
}

// insert adds a pending row of kind and publishes its effect as the
// ingest does; it returns the row's id.
func (e *env) insert(kind string) string {
	e.t.Helper()
	ctx := context.Background()
	var id string
	var created time.Time
	if err := e.pg.Pool.QueryRow(ctx, `INSERT INTO effects (kind, payload) VALUES ($1, '{}') RETURNING id::text, created_at`, kind).Scan(&id, &created); err != nil {
		e.t.Fatal(err)
	}
	e.publish(id, kind, created, id)
	return id
}

func (e *env) publish(id, kind string, created time.Time, msgID string) {
	e.t.Helper()
	msg := ingest.EffectMsg(id, kind, []byte(`{}`), created, msgID)
	if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
		e.t.Fatal(err)
	}
}

// row is the part of a row the tests look at.
type row struct {
	Status      string
	CancelledAt *time.Time
	CancelledBy *string
	CompletedAt *time.Time
	Completion  []byte
}

func (e *env) row(id string) row {
	e.t.Helper()
	var r row
	err := e.pg.Pool.QueryRow(context.Background(), `SELECT status, cancelled_at, cancelled_by, completed_at, completion FROM effects WHERE id = $1`, id).
		Scan(&r.Status, &r.CancelledAt, &r.CancelledBy, &r.CompletedAt, &r.Completion)
	if errors.Is(err, pgx.ErrNoRows) {
		e.t.Fatalf("no row %s", id)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) waitStatus(id, status string) {
	e.t.Helper()
	testenv.WaitFor(e.t, time.Minute, fmt.Sprintf("effect %s %s", id, status), func() bool { return e.row(id).Status == status })
}

// recorder counts the runs of each effect and when each started.
type recorder struct {
	mu     sync.Mutex
	starts map[string][]time.Time
}

func newRecorder() *recorder { return &recorder{starts: map[string][]time.Time{}} }

func (r *recorder) started(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starts[id] = append(r.starts[id], time.Now())
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.starts[id])
}

func (r *recorder) startsOf(id string) []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.starts[id]...)
}

// registry has a handler per kind that records each run and succeeds.
func (e *env) registry(kinds ...string) *effects.Registry {
	reg := effects.NewRegistry()
	for _, k := range kinds {
		reg.Handle(k, func(ctx context.Context, eff effects.Effect) (any, error) {
			e.runs.started(eff.ID)
			return map[string]string{"ran": eff.ID}, nil
		})
	}
	return reg
}
