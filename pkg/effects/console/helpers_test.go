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

// runPipeline runs a dispatcher with reg's handlers and the completer on
// the bundle's table until the test ends.
func (b *bundle) runPipeline(t *testing.T, reg *effects.Registry) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := dispatcher.New(dispatcher.Config{}, reg, b.js, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	c, err := completer.New(completer.Config{DatabaseURL: b.pg.URL, Table: "effects"}.WithDefaults(), b.pg.Pool, b.js, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { _ = d.Run(ctx); done <- struct{}{} }()
	go func() { _ = c.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
}

// waitStatus waits until the row has status want.
func (b *bundle) waitStatus(t *testing.T, id, want string) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, "effect "+id+" "+want, func() bool { return b.status(t, id) == want })
}

// countingRegistry has a handler per kind that succeeds and counts its
// calls per effect.
type countingRegistry struct {
	*effects.Registry
	mu   sync.Mutex
	byID map[string]int
}

func effectsRegistry(t *testing.T, kinds ...string) *countingRegistry {
	t.Helper()
	r := &countingRegistry{Registry: effects.NewRegistry(), byID: map[string]int{}}
	for _, k := range kinds {
		r.Handle(k, func(_ context.Context, e effects.Effect) (any, error) {
			r.mu.Lock()
			r.byID[e.ID]++
			r.mu.Unlock()
			return map[string]bool{"ok": true}, nil
		})
	}
	return r
}

func (r *countingRegistry) calls(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}
