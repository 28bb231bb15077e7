package ingest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// closeSignalListener tells when Serve's shutdown has begun: http.Server
// closes its listeners first.
type closeSignalListener struct {
	net.Listener
	once   sync.Once
	closed chan struct{}
}

func (l *closeSignalListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

type serving struct {
	addr     string
	ln       *closeSignalListener
	cancel   context.CancelFunc
	finished chan struct{}
	err      error // set before finished is closed
}

// serve runs srv.Serve on a free local port until the test ends.
func serve(t *testing.T, srv *Server) *serving {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{
		addr:     ln.Addr().String(),
		ln:       &closeSignalListener{Listener: ln, closed: make(chan struct{})},
		cancel:   cancel,
		finished: make(chan struct{}),
	}
	go func() {
		s.err = srv.Serve(ctx, s.ln)
		close(s.finished)
	}()
	t.Cleanup(func() {
		cancel()
		<-s.finished
	})
	return s
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func postHTTP(t *testing.T, client *http.Client, addr string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+EventsPath, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(SecretHeader, "s")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestServeEnsuresStreamsAndStopsGracefully(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	srv, err := New(Config{WebhookSecret: "s"}, js, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, srv)

	// Services start in any order: the ingest creates the streams.
	waitFor(t, srv.StreamsReady(), "the streams")
	if err := srv.Ready(context.Background()); err != nil {
		t.Errorf("Ready after the streams: %v", err)
	}
	for _, name := range []string{effects.EffectsStream, effects.CompletedStream} {
		if _, err := js.Stream(context.Background(), name); err != nil {
			t.Errorf("stream %s: %v", name, err)
		}
	}

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	if resp := postHTTP(t, client, s.addr, readFixture(t, "insert.json")); resp.StatusCode != http.StatusOK {
		t.Fatalf("POST over HTTP: %s", resp.Status)
	}

	// A request in flight when the stop comes is finished and answered.
	// "Expect: 100-continue" tells when the handler is running: net/http
	// sends 100 Continue when the handler first reads the body. (A request
	// whose headers are read but whose handler has not started is dropped
	// by http.Server.Shutdown, unanswered, which Hasura retries.)
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := readFixture(t, "manual.json")
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n%s: s\r\n"+
		"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n", EventsPath, SecretHeader, len(body))
	replies := bufio.NewReader(conn)
	if cont, err := http.ReadResponse(replies, nil); err != nil || cont.StatusCode != http.StatusContinue {
		t.Fatalf("waiting for 100 Continue: %v", err)
	}
	s.cancel()
	waitFor(t, s.ln.closed, "the shutdown to begin")
	select {
	case <-s.finished:
		t.Fatal("Serve returned while a request was in flight")
	default:
	}
	if _, err := conn.Write(body); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(replies, nil)
	if err != nil {
		t.Fatalf("reading the reply of the request in flight: %v", err)
	}
	defer resp.Body.Close()
	var got map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || got["event_id"] != "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a5b" || got["duplicate"] != false {
		t.Errorf("the request in flight got %s %v", resp.Status, got)
	}

	waitFor(t, s.finished, "Serve to return")
	if s.err != nil {
		t.Errorf("Serve after a graceful stop: %v", s.err)
	}
}

func TestServeAnswers503UntilNATSIsUp(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	// Wait until the client knows: a request sent before it does goes
	// down the dead socket and waits out a whole attempt.
	down := nc.StatusChanged(nats.RECONNECTING)
	n.Shutdown()
	<-down

	srv, err := New(Config{WebhookSecret: "s", PublishTimeout: 300 * time.Millisecond, RetryAfter: 3 * time.Second}, js, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, srv)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	if err := srv.Ready(context.Background()); err == nil {
		t.Error("ready while NATS is down")
	}
	// Listening before NATS is reachable turns Hasura's delivery into a 503
	// with Retry-After, which it honours, rather than a refused connection.
	resp := postHTTP(t, client, s.addr, readFixture(t, "insert.json"))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "3" {
		t.Errorf("POST while NATS is down: %s, Retry-After %q", resp.Status, resp.Header.Get("Retry-After"))
	}

	n.Restart(t)
	waitFor(t, srv.StreamsReady(), "the streams after NATS came up")
	if err := srv.Ready(context.Background()); err != nil {
		t.Errorf("Ready: %v", err)
	}
	if resp := postHTTP(t, client, s.addr, readFixture(t, "insert.json")); resp.StatusCode != http.StatusOK {
		t.Errorf("POST after NATS came up: %s", resp.Status)
	}
}

// TestKindsWithoutConsumerAreReported: effects of a kind that no consumer's
// filter takes are counted and logged; a consumer for the kind, or one taking
// every kind, clears the report.
func TestKindsWithoutConsumerAreReported(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"send_email", "sms", "sms", "typo_kind"} {
		if _, err := js.Publish(ctx, effects.Subject(kind), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, effects.EffectsStream, jetstream.ConsumerConfig{
		Durable: "dispatcher-send_email", FilterSubject: effects.Subject("send_email"), AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{WebhookSecret: "s"}, js, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	kinds, err := srv.checkConsumers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(kinds) != "[sms typo_kind]" {
		t.Errorf("kinds without a consumer: %v, want [sms typo_kind]", kinds)
	}
	if got := testutil.ToFloat64(srv.metrics.kindsWithoutConsumer); got != 2 {
		t.Errorf("effects_kinds_without_consumer = %v, want 2", got)
	}
	if got := testutil.ToFloat64(srv.metrics.unconsumed.WithLabelValues("sms")); got != 2 {
		t.Errorf("effects_unconsumed_kind_messages{kind=sms} = %v, want 2", got)
	}

	// Another team's consumer on several subjects, one with a wildcard.
	if _, err := js.CreateOrUpdateConsumer(ctx, effects.EffectsStream, jetstream.ConsumerConfig{
		Durable: "audit", FilterSubjects: []string{"effects.sms", "effects.typo_*"}, AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	if kinds, err := srv.checkConsumers(ctx); err != nil || fmt.Sprint(kinds) != "[typo_kind]" {
		t.Errorf("after the audit consumer: %v %v, want [typo_kind]", kinds, err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, effects.EffectsStream, jetstream.ConsumerConfig{
		Durable: "everything", FilterSubject: effects.EffectsSubjects, AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	if kinds, err := srv.checkConsumers(ctx); err != nil || len(kinds) != 0 {
		t.Errorf("with a consumer of every kind: %v %v, want none", kinds, err)
	}
	if got := testutil.ToFloat64(srv.metrics.kindsWithoutConsumer); got != 0 {
		t.Errorf("effects_kinds_without_consumer = %v, want 0", got)
	}
}

func TestSubjectMatches(t *testing.T) {
	for _, tc := range []struct {
		filter, subject string
		want            bool
	}{
		{"", "effects.a", true}, {">", "effects.a", true}, {"effects.>", "effects.a", true},
		{"effects.*", "effects.a", true}, {"effects.a", "effects.a", true}, {"effects.a", "effects.b", false},
		{"effects.a.*", "effects.a", false}, {"effects.*", "effects.a.b", false}, {"effects.>", "effects", false},
		{"effects.completed.>", "effects.a", false},
	} {
		if got := subjectMatches(tc.filter, tc.subject); got != tc.want {
			t.Errorf("subjectMatches(%q, %q) = %v", tc.filter, tc.subject, got)
		}
	}
}

// TestConsumerMetricsAreReadAtScrape: each scrape reads the consumers of the
// EFFECTS stream, summed by kind (~any for a consumer of several subjects),
// and reports effects_consumer_info_up 0, without the series, when NATS is
// down.
func TestConsumerMetricsAreReadAtScrape(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{WebhookSecret: "s"}, js, nil, reg); err != nil {
		t.Fatal(err)
	}
	names := []string{"effects_consumer_pending", "effects_consumer_ack_pending", "effects_consumer_redelivered", "effects_consumer_info_up"}
	// No consumer yet: read, and nothing to report.
	if err := testutil.GatherAndCompare(reg, bytes.NewBufferString(`
# HELP effects_consumer_info_up 1 if this scrape read the consumers of the EFFECTS stream from JetStream, 0 if it could not (NATS down, the stream missing, no answer within 3s): the effects_consumer_* series are then missing.
# TYPE effects_consumer_info_up gauge
effects_consumer_info_up 1
`), names...); err != nil {
		t.Error(err)
	}

	for _, kind := range []string{"send_email", "send_email", "send_email", "sms", "sms"} {
		if _, err := js.Publish(ctx, effects.Subject(kind), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	consumer := func(cfg jetstream.ConsumerConfig) jetstream.Consumer {
		t.Helper()
		cfg.AckPolicy = jetstream.AckExplicitPolicy
		c, err := js.CreateOrUpdateConsumer(ctx, effects.EffectsStream, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	fetchOne := func(c jetstream.Consumer) jetstream.Msg {
		t.Helper()
		batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			return m
		}
		t.Fatalf("no message: %v", batch.Error())
		return nil
	}
	// One effect in flight at a time: the fetch after the nak gets the
	// refused effect back rather than the next one.
	email := consumer(jetstream.ConsumerConfig{Durable: "dispatcher-send_email", FilterSubject: effects.Subject("send_email"), MaxAckPending: 1})
	consumer(jetstream.ConsumerConfig{Durable: "dispatcher-sms", FilterSubject: effects.Subject("sms")})
	consumer(jetstream.ConsumerConfig{Durable: "audit", FilterSubjects: []string{"effects.sms", "effects.typo_*"}})
	// One send_email effect delivered, refused, and delivered again: it is
	// ack-pending and redelivered; the other two are pending.
	if err := fetchOne(email).Nak(); err != nil {
		t.Fatal(err)
	}
	if m := fetchOne(email); m == nil {
		t.Fatal("no redelivery")
	}

	want := `
# HELP effects_consumer_ack_pending Effects delivered to the consumers of each kind and not acked yet: running, or waiting out a crashed dispatcher's ack wait (num_ack_pending; read at scrape time).
# TYPE effects_consumer_ack_pending gauge
effects_consumer_ack_pending{kind="send_email"} 1
effects_consumer_ack_pending{kind="sms"} 0
effects_consumer_ack_pending{kind="~any"} 0
# HELP effects_consumer_info_up 1 if this scrape read the consumers of the EFFECTS stream from JetStream, 0 if it could not (NATS down, the stream missing, no answer within 3s): the effects_consumer_* series are then missing.
# TYPE effects_consumer_info_up gauge
effects_consumer_info_up 1
# HELP effects_consumer_pending Effects in the EFFECTS stream not yet delivered to the consumers of each kind (JetStream's num_pending, summed over the kind's consumers; read at scrape time).
# TYPE effects_consumer_pending gauge
effects_consumer_pending{kind="send_email"} 2
effects_consumer_pending{kind="sms"} 2
effects_consumer_pending{kind="~any"} 2
# HELP effects_consumer_redelivered Effects of each kind delivered more than once and not acked yet (num_redelivered; read at scrape time).
# TYPE effects_consumer_redelivered gauge
effects_consumer_redelivered{kind="send_email"} 1
effects_consumer_redelivered{kind="sms"} 0
effects_consumer_redelivered{kind="~any"} 0
`
	if err := testutil.GatherAndCompare(reg, bytes.NewBufferString(want), names...); err != nil {
		t.Error(err)
	}

	down := nc.StatusChanged(nats.RECONNECTING)
	n.Shutdown()
	<-down
	if err := testutil.GatherAndCompare(reg, bytes.NewBufferString(`
# HELP effects_consumer_info_up 1 if this scrape read the consumers of the EFFECTS stream from JetStream, 0 if it could not (NATS down, the stream missing, no answer within 3s): the effects_consumer_* series are then missing.
# TYPE effects_consumer_info_up gauge
effects_consumer_info_up 0
`), names...); err != nil {
		t.Error(err)
	}
}
