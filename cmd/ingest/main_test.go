package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// selector is the variable that makes the test binary run main().
const selector = "EFFECTS_INGEST_TEST_MAIN"

// The tests run this test binary as the command: with
// EFFECTS_INGEST_TEST_MAIN set it runs main() instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv(selector) == "1" {
		os.Args = []string{"ingest"}
		main()
		os.Exit(0) // main returned: the service ran and stopped
	}
	goleak.VerifyTestMain(m)
}

// secret is the webhook secret of the tests; it must never be printed.
const secret = "s3cret-never-printed-8d1f"

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	// Nothing listens on NATS_URL: a configuration error stops the ingest
	// before it connects.
	base := map[string]string{"NATS_URL": "nats://127.0.0.1:1", "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_HTTP_ADDR": "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no secret", nil, "EFFECTS_WEBHOOK_SECRET"},
		{"blank secret", map[string]string{"EFFECTS_WEBHOOK_SECRET": " \t "}, "EFFECTS_WEBHOOK_SECRET"},
		{"bad publish timeout", map[string]string{"EFFECTS_WEBHOOK_SECRET": secret, "EFFECTS_PUBLISH_TIMEOUT": "soon"}, "EFFECTS_PUBLISH_TIMEOUT"},
		{"bad insecure flag", map[string]string{"EFFECTS_WEBHOOK_SECRET": secret, "EFFECTS_INSECURE_NO_SECRET": "maybe"}, "EFFECTS_INSECURE_NO_SECRET"},
		{"body limit below payload limit", map[string]string{
			"EFFECTS_WEBHOOK_SECRET": secret, "EFFECTS_MAX_PAYLOAD_BYTES": "1000000", "EFFECTS_MAX_BODY_BYTES": "1000",
		}, "EFFECTS_MAX_BODY_BYTES"},
		{"bad stream max age", map[string]string{"EFFECTS_WEBHOOK_SECRET": secret, "EFFECTS_STREAM_MAX_AGE": "forever"}, "EFFECTS_STREAM_MAX_AGE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := testenv.MergeEnv(base, tc.env)
			p := testenv.StartProcess(t, selector, env)
			if code := p.Wait(t); code != 2 {
				t.Fatalf("exit %d, want 2\n%s", code, p.Output())
			}
			l := p.FindLog(t, "ingest", "configuration")
			if l == nil || !strings.Contains(fmt.Sprint(l["error"]), tc.want) {
				t.Errorf("no \"configuration\" line naming %s\n%s", tc.want, p.Output())
			}
			if strings.Contains(p.Output(), secret) {
				t.Errorf("the secret was printed\n%s", p.Output())
			}
		})
	}
}

func TestServesStoresAndStops(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	p := testenv.StartProcess(t, selector, map[string]string{
		"NATS_URL":               n.URL,
		"EFFECTS_ADMIN_ADDR":     "127.0.0.1:0",
		"EFFECTS_HTTP_ADDR":      "127.0.0.1:0",
		"EFFECTS_WEBHOOK_SECRET": secret,
		"EFFECTS_LOG_LEVEL":      "debug", // the most output there is to leak the secret
	})
	admin := "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
	webhook := "http://" + p.LoopbackAddr(t, "ingest listening", "addr") + "/hasura/events"
	waitReady(t, p, admin)

	eventID, rowID := newUUID(t), newUUID(t)
	// Spacing and "<" must reach the effect byte for byte.
	const payload = `{"RATESET": 4512, "note": "a<b"}`
	body := hasuraInsert(eventID, rowID, "echo", payload)

	for _, tc := range []struct {
		name   string
		secret string
	}{{"no secret", ""}, {"wrong secret", secret + "x"}} {
		if code, reply := post(t, webhook, tc.secret, body); code != http.StatusUnauthorized {
			t.Errorf("%s: %d %s, want 401", tc.name, code, reply)
		}
	}
	code, reply := post(t, webhook, secret, body)
	if code != http.StatusOK {
		t.Fatalf("POST: %d %s, want 200", code, reply)
	}
	var got struct {
		EffectID  string `json:"effect_id"`
		EventID   string `json:"event_id"`
		Duplicate bool   `json:"duplicate"`
		Sequence  uint64 `json:"sequence"`
	}
	if err := json.Unmarshal([]byte(reply), &got); err != nil || got.EffectID != rowID || got.EventID != eventID || got.Duplicate || got.Sequence == 0 {
		t.Errorf("reply %s (%v): want effect_id %s, event_id %s, not a duplicate, a sequence", reply, err, rowID, eventID)
	}

	// The reply came after JetStream's ack: the effect is stored already.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		t.Fatalf("stream %s: %v", effects.EffectsStream, err)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, effects.Subject("echo"))
	if err != nil {
		t.Fatalf("no message on %s: %v", effects.Subject("echo"), err)
	}
	if msg.Sequence != got.Sequence || msg.Header.Get(jetstream.MsgIDHeader) != eventID {
		t.Errorf("stored message: sequence %d, %s %q; want %d, %q", msg.Sequence, jetstream.MsgIDHeader,
			msg.Header.Get(jetstream.MsgIDHeader), got.Sequence, eventID)
	}
	var eff effects.Effect
	if err := json.Unmarshal(msg.Data, &eff); err != nil {
		t.Fatalf("stored message %s: %v", msg.Data, err)
	}
	wantCreated := time.Date(2026, 3, 14, 9, 26, 53, 589793000, time.UTC)
	if eff.ID != rowID || eff.Kind != "echo" || string(eff.Payload) != payload || !eff.CreatedAt.Equal(wantCreated) ||
		eff.SessionVariables["x-hasura-role"] != "user" {
		t.Errorf("stored effect %s: want id %s, kind echo, payload %s, created_at %s, the session variables",
			msg.Data, rowID, payload, wantCreated)
	}

	// Hasura redelivers the same event: stored once.
	code, reply = post(t, webhook, secret, body)
	if code != http.StatusOK || !strings.Contains(reply, `"duplicate":true`) {
		t.Errorf("redelivered POST: %d %s, want 200 and a duplicate", code, reply)
	}
	if info, err := stream.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Errorf("stream holds %v messages (%v), want 1", info.State.Msgs, err)
	}

	_, metrics := testenv.HTTPGet(t, admin+"/metrics")
	for _, want := range []string{
		`effects_ingested_total{kind="echo",outcome="published"} 1`,
		`effects_ingested_total{kind="echo",outcome="duplicate"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	if p.FindLog(t, "ingest", "stopped") == nil {
		t.Errorf("no \"stopped\" line\n%s", p.Output())
	}
	if strings.Contains(p.Output(), secret) {
		t.Errorf("the secret was printed\n%s", p.Output())
	}
}

// TestStartsBeforeNATS checks that the ingest answers while NATS is not up
// yet, is not ready, and becomes ready once NATS is there.
func TestStartsBeforeNATS(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	url := n.URL
	n.Shutdown()
	p := testenv.StartProcess(t, selector, map[string]string{
		"NATS_URL":               url,
		"EFFECTS_ADMIN_ADDR":     "127.0.0.1:0",
		"EFFECTS_HTTP_ADDR":      "127.0.0.1:0",
		"EFFECTS_WEBHOOK_SECRET": secret,
	})
	admin := "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
	webhook := "http://" + p.LoopbackAddr(t, "ingest listening", "addr") + "/hasura/events"
	if code, body := testenv.HTTPGet(t, admin+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz without NATS: %d %s, want 503", code, body)
	}
	resp := postResp(t, webhook, secret, hasuraInsert(newUUID(t), newUUID(t), "echo", `{}`))
	if resp.code != http.StatusServiceUnavailable || resp.retryAfter == "" {
		t.Errorf("POST without NATS: %d (Retry-After %q) %s, want 503 with Retry-After", resp.code, resp.retryAfter, resp.body)
	}
	n.Restart(t)
	waitReady(t, p, admin)
	if code, reply := post(t, webhook, secret, hasuraInsert(newUUID(t), newUUID(t), "echo", `{}`)); code != http.StatusOK {
		t.Errorf("POST once NATS is up: %d %s, want 200", code, reply)
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// TestNotReadyWhileStreamsConflict starts the ingest on a NATS whose EFFECTS
// stream cannot be made what the pipeline needs: it stays not ready, says
// why, and still stops cleanly.
func TestNotReadyWhileStreamsConflict(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: effects.EffectsStream, Subjects: []string{effects.EffectsSubjects}, Retention: jetstream.WorkQueuePolicy,
	}); err != nil {
		t.Fatal(err)
	}
	p := testenv.StartProcess(t, selector, map[string]string{
		"NATS_URL":               n.URL,
		"EFFECTS_ADMIN_ADDR":     "127.0.0.1:0",
		"EFFECTS_HTTP_ADDR":      "127.0.0.1:0",
		"EFFECTS_WEBHOOK_SECRET": secret,
	})
	admin := "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
	p.WaitFor(t, "a failed attempt at the streams", func() bool {
		for _, l := range p.Lines() {
			if l["msg"] == "ensuring the streams failed; retrying" {
				return true
			}
		}
		return false
	})
	if code, body := testenv.HTTPGet(t, admin+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "retention") {
		t.Errorf("/readyz with a stream of the wrong retention: %d %s, want 503 saying why", code, body)
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// TestStopsBeforeNATS stops the ingest before it ever reached NATS: a stop,
// not a failure.
func TestStopsBeforeNATS(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	n.Shutdown()
	p := testenv.StartProcess(t, selector, map[string]string{
		"NATS_URL":               n.URL,
		"EFFECTS_ADMIN_ADDR":     "127.0.0.1:0",
		"EFFECTS_HTTP_ADDR":      "127.0.0.1:0",
		"EFFECTS_WEBHOOK_SECRET": secret,
	})
	p.LoopbackAddr(t, "ingest listening", "addr")
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	if p.FindLog(t, "ingest", "stopped") == nil {
		t.Errorf("no \"stopped\" line\n%s", p.Output())
	}
}

// hasuraInsert is the body Hasura POSTs for an INSERT into the effects table
// (see internal/ingest/testdata/insert.json).
func hasuraInsert(eventID, rowID, kind, payload string) []byte {
	return fmt.Appendf(nil, `{
  "id": %q,
  "created_at": "2026-03-14T09:26:53.589793",
  "trigger": {"name": "effects_dispatch"},
  "table": {"schema": "public", "name": "effects"},
  "event": {
    "op": "INSERT",
    "session_variables": {"x-hasura-role": "user", "x-hasura-user-id": "b7e20ab9-b690-4f69-9d7c-60e5c5aa7b34"},
    "trace_context": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7", "sampling_state": "1"},
    "data": {
      "old": null,
      "new": {"id": %q, "kind": %q, "payload": %s, "status": "pending",
        "created_at": "2026-03-14T09:26:53.589793+00:00", "completed_at": null,
        "completion": null, "error": null, "attempts": 0}
    }
  },
  "delivery_info": {"current_retry": 0, "max_retries": 5}
}`, eventID, rowID, kind, payload)
}

func newUUID(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// waitReady polls /readyz until it answers 200.
func waitReady(t *testing.T, p *testenv.Process, admin string) {
	t.Helper()
	p.WaitFor(t, "/readyz 200", func() bool {
		code, _ := testenv.HTTPGet(t, admin+"/readyz")
		return code == http.StatusOK
	})
}

type response struct {
	code       int
	retryAfter string
	body       string
}

func postResp(t *testing.T, url, secret string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if secret != "" {
		req.Header.Set("X-Effects-Secret", secret)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return response{resp.StatusCode, resp.Header.Get("Retry-After"), string(b)}
}

func post(t *testing.T, url, secret string, body []byte) (int, string) {
	t.Helper()
	r := postResp(t, url, secret, body)
	return r.code, r.body
}

var httpClient = &http.Client{Timeout: 15 * time.Second}

// TestRefusesAnOldNATSServer: against a 2.9 server (which ignores the reason
// of a terminate and so would redeliver failed effects forever) the ingest
// does not start, and says why.
func TestRefusesAnOldNATSServer(t *testing.T) {
	t.Parallel()
	for _, s := range testenv.OldNATSServers(t, "2.9.10") {
		t.Run(s.Name, func(t *testing.T) {
			p := testenv.StartProcess(t, selector, map[string]string{
				"NATS_URL": s.URL, "EFFECTS_WEBHOOK_SECRET": secret,
				"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_HTTP_ADDR": "127.0.0.1:0",
			})
			if code := p.Wait(t); code != 1 {
				t.Fatalf("exit %d, want 1\n%s", code, p.Output())
			}
			l := p.FindLog(t, "ingest", "stopped with an error")
			if l == nil || !strings.Contains(fmt.Sprint(l["error"]), "nats-server is too old: it is 2.9.") ||
				!strings.Contains(fmt.Sprint(l["error"]), natsconn.MinServerVersion) {
				t.Errorf("no error naming the version and the minimum\n%s", p.Output())
			}
		})
	}
}

// TestStopsWhenALaterServerIsTooOld: NATS is down when the ingest starts;
// the server that comes up is 2.9. The ingest stops with the reason rather
// than run on answering 503 forever.
func TestStopsWhenALaterServerIsTooOld(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing answers until the stand-in below
	p := testenv.StartProcess(t, selector, map[string]string{
		"NATS_URL": "nats://" + addr, "EFFECTS_WEBHOOK_SECRET": secret,
		"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_HTTP_ADDR": "127.0.0.1:0",
	})
	p.WaitForLog(t, "ingest listening")
	testenv.ServeFakeNATS(t, addr, "2.9.10")
	if code := p.Wait(t); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, p.Output())
	}
	l := p.FindLog(t, "ingest", "stopped with an error")
	if l == nil || !strings.Contains(fmt.Sprint(l["error"]), "nats-server is too old: it is 2.9.10") {
		t.Errorf("no error naming the old version\n%s", p.Output())
	}
}
