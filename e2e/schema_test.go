package e2e

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/schemas"
)

// Every message the services publish, read back from both streams, validates
// against the v1 JSON Schemas other teams code against: effects of a success,
// a success without a result, a retried and a permanent failure, a row
// written without Hasura session variables, and the failure the ingest
// publishes for a kind that is not valid. So do the Hasura bodies delivered.
func TestPublishedMessagesMatchSchemas(t *testing.T) {
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	reg.Handle("with_result", func(_ context.Context, e effects.Effect) (any, error) {
		return map[string]any{"echo": e.Payload, "note": "<&>\u2028"}, nil
	})
	reg.Handle("no_result", func(context.Context, effects.Effect) (any, error) { return nil, nil })
	reg.Handle("keeps_failing", func(context.Context, effects.Effect) (any, error) {
		return nil, errors.New("upstream returned 503")
	})
	reg.Handle("bad_input", func(context.Context, effects.Effect) (any, error) {
		return nil, effects.Permanent(errors.New("payload has no \"to\""))
	})
	p := startPipeline(t, options{
		registry: reg,
		dispatcher: dispatcher.Config{
			Concurrency: 4, MaxAttempts: 2, RetryBase: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond,
			HandlerTimeout: 5 * time.Second, ShutdownTimeout: 2 * time.Second,
		},
	})

	type want struct{ status, kind string }
	wants := map[string]want{}
	direct := map[string]bool{} // published on effects.<kind> by the test, not by the ingest
	deliver := func(kind, payload string, edit func([]byte) []byte) string {
		t.Helper()
		id, row := p.insert(kind, payload)
		_, body := p.event("INSERT", row)
		if edit != nil {
			body = edit(body)
		}
		if err := v.HasuraEvent(body); err != nil {
			t.Errorf("the Hasura body: %v\n%s", err, body)
		}
		if r := p.post(body); r.Code != 200 {
			t.Fatalf("%s: reply %+v", kind, r)
		}
		return id
	}
	wants[deliver("with_result", `{"to": "ops@example.com", "n": 12345678901234567890}`, nil)] = want{"succeeded", "with_result"}
	wants[deliver("no_result", `[1, "two", null]`, func(b []byte) []byte {
		old := []byte(`"session_variables":{"x-hasura-role":"user"}`)
		if !bytes.Contains(b, old) {
			t.Fatalf("no session variables in %s", b)
		}
		return bytes.Replace(b, old, []byte(`"session_variables":null`), 1)
	})] = want{"succeeded", "no_result"}
	wants[deliver("keeps_failing", `{}`, nil)] = want{"failed", "keeps_failing"}
	wants[deliver("bad_input", `"just a string"`, nil)] = want{"failed", "bad_input"}
	invalid := deliver("not.a valid kind", `{}`, nil)
	wants[invalid] = want{"failed", "not.a valid kind"}

	// Effect messages another publisher got wrong, put on the stream
	// directly: the dispatcher fails their rows, and its completions must
	// keep to the contract too, on the subject of the kind they came on.
	pub, pubJS, err := natsconn.Connect(p.natsURL, "e2e-schema-publisher", logger(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	malformed := func(body func(id string) string) {
		t.Helper()
		id, _ := p.insert("with_result", `{}`)
		msg := nats.NewMsg(effects.Subject("with_result"))
		msg.Data = []byte(body(id))
		msg.Header.Set(jetstream.MsgIDHeader, "malformed-"+id)
		if _, err := pubJS.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
		wants[id] = want{"failed", "with_result"}
		direct[id] = true
	}
	malformed(func(id string) string {
		return `{"id":"` + id + `","kind":"with_result","payload":{},"created_at":"yesterday","session_variables":null}`
	})
	malformed(func(id string) string {
		return `{"id":"` + id + `","kind":"no_result","payload":{},"created_at":"2026-03-14T09:26:53Z","session_variables":null}`
	})
	malformed(func(id string) string {
		return `{"id":"` + id + `","kind":"` + strings.Repeat("k", 300) + `","payload":{}}`
	})

	for id, w := range wants {
		if got := p.settled(id); got.Status != w.status {
			t.Fatalf("%s (%s): row %+v, want %s", id, w.kind, got, w.status)
		}
	}

	nc, js, err := natsconn.Connect(p.natsURL, "e2e-schema-reader", logger(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	seen := map[string]bool{}
	for _, m := range storedMessages(ctx, t, js, effects.EffectsStream) {
		if bytes.HasPrefix([]byte(m.Header.Get(jetstream.MsgIDHeader)), []byte("malformed-")) {
			continue // the test's own malformed messages
		}
		if err := v.Effect(m.Data); err != nil {
			t.Errorf("%s: %v\n%s", m.Subject, err, m.Data)
		}
		if m.Header.Get(jetstream.MsgIDHeader) == "" {
			t.Errorf("%s: no %s header", m.Subject, jetstream.MsgIDHeader)
		}
		for id, w := range wants {
			if bytes.Contains(m.Data, []byte(id)) {
				seen["effect "+id] = true
				if m.Subject != effects.Subject(w.kind) {
					t.Errorf("effect %s on %s, want %s", id, m.Subject, effects.Subject(w.kind))
				}
			}
		}
	}
	for _, m := range storedMessages(ctx, t, js, effects.CompletedStream) {
		if err := v.Completion(m.Data); err != nil {
			t.Errorf("%s: %v\n%s", m.Subject, err, m.Data)
		}
		if m.Header.Get(jetstream.MsgIDHeader) == "" {
			t.Errorf("%s: no %s header", m.Subject, jetstream.MsgIDHeader)
		}
		for id, w := range wants {
			if bytes.Contains(m.Data, []byte(id)) {
				seen["completion "+id] = true
				if m.Subject != effects.CompletedSubject(w.kind) {
					t.Errorf("completion of %s on %s, want %s", id, m.Subject, effects.CompletedSubject(w.kind))
				}
			}
		}
	}
	for id, w := range wants {
		if id != invalid && !direct[id] && !seen["effect "+id] {
			t.Errorf("no effect message for %s (%s)", id, w.kind)
		}
		if !seen["completion "+id] {
			t.Errorf("no completion message for %s (%s)", id, w.kind)
		}
	}
	if seen["effect "+invalid] {
		t.Error("a kind that is not valid was published as an effect")
	}
}

// storedMessages reads every message stored in a stream, by sequence.
func storedMessages(ctx context.Context, t *testing.T, js jetstream.JetStream, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq != 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		t.Fatalf("stream %s holds no messages", stream)
	}
	return out
}
