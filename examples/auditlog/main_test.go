package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// syncBuffer is the example's output, written by its consumer goroutine and
// read by the test.
type syncBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	wrote chan struct{} // signalled after every write
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{wrote: make(chan struct{}, 1)} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		select {
		case s.wrote <- struct{}{}:
		default:
		}
	}()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// The audit log writes every completion, of every kind and of an invalid
// kind, terms a malformed one with a warning, and acks on its own durable
// consumer, which survives a restart and does not log a completion twice.
func TestAuditLogWritesEveryCompletion(t *testing.T) {
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	client := effects.NewClient(js)
	const ok, bad, inv = "0b7e5d2a-3c4f-4a1b-9e8d-7f6a5b4c3d21", "0b7e5d2a-3c4f-4a1b-9e8d-7f6a5b4c3d22", "0b7e5d2a-3c4f-4a1b-9e8d-7f6a5b4c3d23"
	if err := client.Complete(ctx, effects.Ref{ID: ok, Kind: "send_email", EventID: "e1", Attempt: 1}, map[string]bool{"sent": true}); err != nil {
		t.Fatal(err)
	}
	if err := client.Fail(ctx, effects.Ref{ID: bad, Kind: "http_request", EventID: "e2", Attempt: 3}, errors.New("upstream returned 503")); err != nil {
		t.Fatal(err)
	}
	if err := client.Fail(ctx, effects.Ref{ID: inv, Kind: "not a kind", EventID: "e3"}, errors.New("kind is not valid")); err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: effects.CompletedSubject("send_email"), Data: []byte(`{"effect_id":"x"}`)}); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{"NATS_URL": srv.URL}
	start := func() (out *syncBuffer, stop func()) {
		out = newSyncBuffer()
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- run(rctx, func(k string) string { return env[k] }, out) }()
		return out, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}
	out, stop := start()
	waitLines(t, out, 4)
	stop()
	got := map[string]map[string]any{}
	warnings := 0
	for _, l := range out.lines(t) {
		switch l["msg"] {
		case "completion":
			got[l["effect_id"].(string)] = l
		case "malformed completion":
			warnings++
		default:
			t.Errorf("unexpected line %v", l)
		}
	}
	if warnings != 1 || len(got) != 3 {
		t.Fatalf("%d completions, %d warnings: %v", len(got), warnings, out.lines(t))
	}
	if l := got[ok]; l["status"] != "succeeded" || l["kind"] != "send_email" || l["error"] != nil {
		t.Errorf("success logged as %v", l)
	}
	if l := got[bad]; l["status"] != "failed" || l["error"] != "upstream returned 503" || l["attempts"] != 3.0 {
		t.Errorf("failure logged as %v", l)
	}
	if l := got[inv]; l["status"] != "failed" || l["kind"] != "not a kind" {
		t.Errorf("invalid kind's failure logged as %v", l)
	}

	// Restarted, it continues where its durable consumer acked: only what is new.
	out, stop = start()
	const later = "0b7e5d2a-3c4f-4a1b-9e8d-7f6a5b4c3d24"
	if err := client.Complete(ctx, effects.Ref{ID: later, Kind: "echo", EventID: "e4", Attempt: 1}, nil); err != nil {
		t.Fatal(err)
	}
	waitLines(t, out, 1)
	stop()
	if lines := out.lines(t); len(lines) != 1 || lines[0]["effect_id"] != later {
		t.Fatalf("after the restart: %v", lines)
	}
}

func waitLines(t *testing.T, out *syncBuffer, n int) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for len(out.lines(t)) < n {
		select {
		case <-out.wrote:
		case <-timeout:
			t.Fatalf("timed out waiting for %d log lines: %v", n, out.lines(t))
		}
	}
}

func TestConfig(t *testing.T) {
	for env, want := range map[string]string{
		"AUDIT_CONSUMER=dispatcher-send_email": "dispatcher's consumers",
		"AUDIT_DELIVER=sometimes":              "want all or new",
	} {
		k, v, _ := strings.Cut(env, "=")
		_, err := readConfig(func(s string) string {
			if s == k {
				return v
			}
			return ""
		})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want one saying %q", env, err, want)
		}
	}
	c, err := readConfig(func(string) string { return "" })
	if err != nil || c.Consumer != "audit-log" || c.URL != nats.DefaultURL {
		t.Errorf("defaults: %+v, %v", c, err)
	}
}
