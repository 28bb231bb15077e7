package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/reconcile"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

const secret = "e2e-shared-secret"

// pipeline is the three services running in this process against a real
// PostgreSQL schema and a real (in-process) NATS server, each with its own
// connection, as in production.
type pipeline struct {
	t       testing.TB
	nats    *testenv.NATS // nil when natsURL names an external server
	natsURL string
	pg      *testenv.Postgres
	url     string // the ingest webhook
	client  *http.Client
	events  atomic.Int64
}

type options struct {
	registry       *effects.Registry
	dispatcher     dispatcher.Config
	completerBatch int
	// completerAckWait is the completer consumer's ack wait (0: its
	// default, 30s).
	completerAckWait time.Duration
	// natsURL names an external NATS server to use instead of an
	// in-process one (the benchmark, to run NATS as its own process, as in
	// production). Its effects streams are deleted first.
	natsURL string
	// tableSources starts that many ingest table sources (replicas) beside
	// the webhook, as EFFECTS_SOURCE=webhook,table does.
	tableSources int
	// ingest, when set, changes the webhook's configuration (its limits).
	ingest func(*ingest.Config)
}

func logger() *slog.Logger {
	if os.Getenv("E2E_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startPipeline(t testing.TB, o options) *pipeline {
	t.Helper()
	p := &pipeline{t: t, pg: testenv.StartMigrated(t)}
	if o.natsURL != "" {
		p.natsURL = o.natsURL
	} else {
		p.nats = testenv.StartNATS(t)
		p.natsURL = p.nats.URL
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := logger()

	connect := func(name string) *natsPair {
		nc, js, err := natsconn.Connect(p.natsURL, name, log, 0)
		if err != nil {
			t.Fatal(err)
		}
		return &natsPair{NC: nc, JS: js}
	}
	var stops []chan struct{}
	run := func(name string, f func(context.Context) error) {
		done := make(chan struct{})
		stops = append(stops, done)
		go func() {
			defer close(done)
			if err := f(ctx); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
	}

	if o.natsURL != "" {
		admin := connect("e2e-admin")
		for _, name := range []string{effects.EffectsStream, effects.CompletedStream} {
			if err := admin.JS.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Fatal(err)
			}
		}
		admin.NC.Close()
	}
	in := connect("e2e-ingest")
	icfg := ingest.Config{WebhookSecret: secret}
	if o.ingest != nil {
		o.ingest(&icfg)
	}
	icfg = icfg.WithDefaults()
	ing, err := ingest.New(icfg, in.JS, log.With("service", "ingest"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + ln.Addr().String() + "/hasura/events"
	run("ingest", func(ctx context.Context) error { return ing.Serve(ctx, ln) })
	var sources []*ingest.TableSource
	for i := range o.tableSources {
		tn := connect(fmt.Sprintf("e2e-table-%d", i))
		tcfg := ingest.TableConfig{DatabaseURL: p.pg.URL, Table: "effects"}
		pool, err := ingest.OpenTablePool(tcfg)
		if err != nil {
			t.Fatal(err)
		}
		src, err := ingest.NewTableSource(tcfg, pool, tn.JS, log.With("service", "ingest", "replica", i), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, src)
		run("table source", src.Run)
		t.Cleanup(func() { pool.Close(); tn.NC.Close() })
	}

	dn := connect("e2e-dispatcher")
	d, err := dispatcher.New(o.dispatcher, o.registry, dn.JS, log.With("service", "dispatcher"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	run("dispatcher", d.Run)

	cn := connect("e2e-completer")
	ccfg := completer.Config{DatabaseURL: p.pg.URL, Table: "effects", BatchSize: o.completerBatch, AckWait: o.completerAckWait}.WithDefaults()
	c, err := completer.New(ccfg, p.pg.Pool, cn.JS, log.With("service", "completer"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	run("completer", c.Run)
	// The completer binary runs the scheduler beside it.
	sc, err := reconcile.NewScheduler(reconcile.ScheduleConfig{Table: "effects"}, p.pg.Pool, cn.JS, log.With("service", "completer"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	run("scheduler", sc.Run)

	t.Cleanup(func() {
		cancel()
		for _, s := range stops {
			<-s
		}
		for _, c := range []*natsPair{in, dn, cn} {
			c.NC.Close()
		}
	})
	p.client = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256},
	}
	// Ready when every service is: the ingest publishes, the dispatcher
	// consumes, the completer writes.
	p.waitFor(20*time.Second, "services ready", func() bool {
		for _, src := range sources {
			if src.Ready(ctx) != nil {
				return false
			}
		}
		return ing.Ready(ctx) == nil && d.Ready(ctx) == nil && c.CheckConsuming(ctx) == nil
	})
	return p
}

func (p *pipeline) waitFor(within time.Duration, what string, ok func() bool) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			p.t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// insert adds a row the way any client would, and returns it as Hasura
// would put it in an event (row_to_json).
func (p *pipeline) insert(kind string, payload string) (id string, row json.RawMessage) {
	p.t.Helper()
	ctx := context.Background()
	err := p.pg.Pool.QueryRow(ctx,
		`INSERT INTO effects (kind, payload) VALUES ($1, $2::jsonb) RETURNING id::text, row_to_json(effects)::text`,
		kind, payload).Scan(&id, &row)
	if err != nil {
		p.t.Fatal(err)
	}
	return id, row
}

// insertWithID adds a row with a given id (for fixtures).
func (p *pipeline) insertWithID(id, kind, payload string) {
	p.t.Helper()
	if _, err := p.pg.Pool.Exec(context.Background(),
		`INSERT INTO effects (id, kind, payload) VALUES ($1, $2, $3::jsonb)`, id, kind, payload); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pipeline) rowJSON(id string) json.RawMessage {
	p.t.Helper()
	var row json.RawMessage
	if err := p.pg.Pool.QueryRow(context.Background(),
		`SELECT row_to_json(e)::text FROM effects e WHERE id = $1`, id).Scan(&row); err != nil {
		p.t.Fatal(err)
	}
	return row
}

// event builds a Hasura v2 event-trigger body.
func (p *pipeline) event(op string, row json.RawMessage) (eventID string, body []byte) {
	n := p.events.Add(1)
	eventID = fmt.Sprintf("e2e00000-0000-4000-8000-%012d", n)
	newRow, oldRow := row, json.RawMessage("null")
	if op == "DELETE" {
		newRow, oldRow = json.RawMessage("null"), row
	}
	body, _ = json.Marshal(map[string]any{
		"id":         eventID,
		"created_at": time.Now().UTC().Format("2006-01-02T15:04:05.999999"),
		"trigger":    map[string]any{"name": "effects_dispatch"},
		"table":      map[string]any{"schema": "public", "name": "effects"},
		"event": map[string]any{
			"op":                op,
			"session_variables": map[string]string{"x-hasura-role": "user"},
			"trace_context":     nil,
			"data":              map[string]any{"old": oldRow, "new": newRow},
		},
		"delivery_info": map[string]any{"current_retry": 0, "max_retries": 5},
	})
	return eventID, body
}

type reply struct {
	Code       int
	RetryAfter string
	EffectID   string `json:"effect_id"`
	Duplicate  bool   `json:"duplicate"`
	Rejected   string `json:"rejected"`
	Ignored    bool   `json:"ignored"`
	Scheduled  bool   `json:"scheduled"`
	Error      string `json:"error"`

	decodeErr error
}

// post delivers a body the way Hasura does and fails the test on a transport
// error or a reply that is not JSON.
func (p *pipeline) post(body []byte) reply {
	p.t.Helper()
	r := p.postRaw(body)
	if r.decodeErr != nil {
		p.t.Fatalf("reply %d: %v", r.Code, r.decodeErr)
	}
	return r
}

// postRaw delivers a body and returns the reply whatever it is.
func (p *pipeline) postRaw(body []byte) reply {
	req, err := http.NewRequest(http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "hasura-graphql-engine/v2.40.0")
	req.Header.Set("X-Effects-Secret", secret)
	req.Header.Set("X-B3-TraceId", "4bf92f3577b34da6a3ce929d0e0e4736")
	req.Header.Set("X-B3-SpanId", "00f067aa0ba902b7")
	req.Header.Set("X-B3-Sampled", "1")
	resp, err := p.client.Do(req)
	if err != nil {
		return reply{decodeErr: err}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	r := reply{Code: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	if err := json.Unmarshal(data, &r); err != nil {
		r.decodeErr = fmt.Errorf("%q: %w", data, err)
	}
	return r
}

type row struct {
	Status      string
	Attempts    int
	Completion  json.RawMessage
	Error       *string
	CompletedAt *time.Time
}

func (p *pipeline) row(id string) row {
	p.t.Helper()
	var r row
	if err := p.pg.Pool.QueryRow(context.Background(),
		`SELECT status, attempts, completion, error, completed_at FROM effects WHERE id = $1`, id).
		Scan(&r.Status, &r.Attempts, &r.Completion, &r.Error, &r.CompletedAt); err != nil {
		p.t.Fatal(err)
	}
	return r
}

// settled waits until the row is no longer pending and returns it.
func (p *pipeline) settled(id string) row {
	p.t.Helper()
	var r row
	p.waitFor(30*time.Second, "row "+id+" to leave pending", func() bool {
		r = p.row(id)
		return r.Status != string(effects.StatusPending)
	})
	return r
}

type natsPair struct {
	NC *nats.Conn
	JS jetstream.JetStream
}
