package console

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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

const (
	testToken    = "operator-token-0123456789abcdef"
	testReadOnly = "readonly-token-0123456789abcdef"
)

// bundle is a console on a real PostgreSQL table and a real JetStream,
// served by an httptest server.
type bundle struct {
	pg   *testenv.Postgres
	nats *testenv.NATS
	nc   *nats.Conn
	js   jetstream.JetStream
	h    *Handler
	srv  *httptest.Server
	// client does not follow redirects, so a test sees them.
	client *http.Client
}

// setup starts the console with both tokens (configure may change that).
func setup(t *testing.T, configure ...func(*Config)) *bundle {
	t.Helper()
	b := &bundle{pg: testenv.StartMigrated(t), nats: testenv.StartNATS(t)}
	b.nc, b.js = b.nats.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := effects.EnsureStreams(ctx, b.js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{DB: b.pg.Pool, NATS: b.nc, Token: testToken, ReadOnlyToken: testReadOnly, Refresh: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, c := range configure {
		c(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.h = h
	t.Cleanup(h.Close)
	b.srv = httptest.NewServer(h)
	t.Cleanup(b.srv.Close)
	b.client = &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	return b
}

// insert adds a row and returns its id; status "" leaves the default
// (pending).
func (b *bundle) insert(t *testing.T, kind, status, payload string) string {
	t.Helper()
	if status == "" {
		status = "pending"
	}
	var errText *string
	if status == "failed" {
		s := "downstream said no"
		errText = &s
	}
	var id string
	err := b.pg.Pool.QueryRow(context.Background(), `INSERT INTO effects (kind, status, payload, error, attempts, completed_at)
		VALUES ($1, $2, $3, $4, CASE WHEN $2 = 'pending' THEN 0 ELSE 1 END, CASE WHEN $2 = 'pending' THEN NULL ELSE now() END)
		RETURNING id::text`, kind, status, payload, errText).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (b *bundle) status(t *testing.T, id string) string {
	t.Helper()
	var s string
	if err := b.pg.Pool.QueryRow(context.Background(), `SELECT status FROM effects WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// rerunBy is the row's rerun_requested_by, and whether a re-run was asked.
func (b *bundle) rerunBy(t *testing.T, id string) (string, bool) {
	t.Helper()
	var at *time.Time
	var by *string
	if err := b.pg.Pool.QueryRow(context.Background(), `SELECT rerun_requested_at, rerun_requested_by FROM effects WHERE id = $1`, id).
		Scan(&at, &by); err != nil {
		t.Fatal(err)
	}
	if by == nil {
		return "", at != nil
	}
	return *by, at != nil
}

// published is the number of messages in the EFFECTS stream.
func (b *bundle) published(t *testing.T) uint64 {
	t.Helper()
	s, err := b.js.Stream(context.Background(), effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// request sends method path with the bearer token (none when ""), the
// form (for a POST) and extra headers.
func (b *bundle) request(t *testing.T, method, path, token string, form url.Values, header map[string]string) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(text)
}

// runPipeline runs, until the test ends, what the controls need: a
// dispatcher with reg's handlers that obeys them, the completer, and the
// controls' syncer (as the completer service runs it); it returns once the
// dispatcher has read the controls.
func (b *bundle) runPipeline(t *testing.T, reg *effects.Registry) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := dispatcher.New(dispatcher.Config{RetryBase: 10 * time.Millisecond}, reg, b.js, logger, prometheus.NewRegistry(), dispatcher.WithControls())
	if err != nil {
		t.Fatal(err)
	}
	c, err := completer.New(completer.Config{DatabaseURL: b.pg.URL, Table: "effects"}.WithDefaults(), b.pg.Pool, b.js, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	table, err := schema.ParseTable("effects")
	if err != nil {
		t.Fatal(err)
	}
	syncer := control.NewSyncer(b.pg.Pool, b.js, table, control.SyncOptions{Logger: logger})
	var wg sync.WaitGroup
	wg.Go(func() { _ = d.Run(ctx) })
	wg.Go(func() { _ = c.Run(ctx) })
	wg.Go(func() { _ = syncer.Run(ctx, 200*time.Millisecond, prometheus.NewRegistry()) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	testenv.WaitFor(t, 30*time.Second, "the dispatcher ready", func() bool { return d.Ready(ctx) == nil })
}

// publish puts a row's effect on JetStream as the ingest does.
func (b *bundle) publish(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	var kind string
	var payload []byte
	var created time.Time
	if err := b.pg.Pool.QueryRow(ctx, `SELECT kind, payload::text, created_at FROM effects WHERE id = $1`, id).Scan(&kind, &payload, &created); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.PublishMsg(ctx, ingest.EffectMsg(id, kind, payload, created, id)); err != nil {
		t.Fatal(err)
	}
}

// waitStatus waits until the row has status want.
func (b *bundle) waitStatus(t *testing.T, id, want string) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, "effect "+id+" "+want, func() bool { return b.status(t, id) == want })
}

// countingRegistry has a handler per kind that succeeds and records when
// it was called, per effect.
type countingRegistry struct {
	*effects.Registry
	mu   sync.Mutex
	byID map[string][]time.Time
}

func effectsRegistry(t *testing.T, kinds ...string) *countingRegistry {
	t.Helper()
	r := &countingRegistry{Registry: effects.NewRegistry(), byID: map[string][]time.Time{}}
	for _, k := range kinds {
		r.Handle(k, func(_ context.Context, e effects.Effect) (any, error) {
			r.mu.Lock()
			r.byID[e.ID] = append(r.byID[e.ID], time.Now())
			r.mu.Unlock()
			return map[string]bool{"ok": true}, nil
		})
	}
	return r
}

func (r *countingRegistry) calls(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byID[id])
}

// firstCall is when the handler first ran for the effect (zero: never).
func (r *countingRegistry) firstCall(id string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.byID[id]) == 0 {
		return time.Time{}
	}
	return r.byID[id][0]
}
