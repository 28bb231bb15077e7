package ingest

// Fuzz targets for what the ingest reads from outside: the body Hasura POSTs
// (FuzzWebhook), the trace context it sends (FuzzTraceContext) and a row of
// the table source (FuzzTableRow). Their seed corpus (f.Add seeds and
// testdata/fuzz/<FuzzName>/) runs in every `go test`; `make fuzz` fuzzes them.

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"

	"github.com/effects-run/effects/internal/jspub"
	"github.com/effects-run/effects/pkg/effects"
)

// captureJS is a JetStream, and the webhook's effect publisher, that stores
// nothing: it acks every publish at once and keeps the messages for the test
// to check. Any other method panics (the embedded interface is nil), which
// the webhook must not need.
type captureJS struct {
	jetstream.JetStream
	mu   sync.Mutex
	msgs []*nats.Msg
}

func (c *captureJS) Conn() *nats.Conn { return nil }

func (c *captureJS) PublishMsgAsync(m *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
	f := &ackedFuture{msg: m, ok: make(chan *jetstream.PubAck, 1), err: make(chan error)}
	f.ok <- &jetstream.PubAck{Stream: "EFFECTS", Sequence: uint64(len(c.msgs))}
	return f, nil
}

func (c *captureJS) publish(m *nats.Msg, _ time.Duration) (jspub.Ack, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
	return jspub.Ack{Seq: uint64(len(c.msgs))}, nil
}

func (c *captureJS) take() []*nats.Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.msgs
	c.msgs = nil
	return m
}

type ackedFuture struct {
	msg *nats.Msg
	ok  chan *jetstream.PubAck
	err chan error
}

func (f *ackedFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *ackedFuture) Err() <-chan error            { return f.err }
func (f *ackedFuture) Msg() *nats.Msg               { return f.msg }

// addFuzzFixtures adds every JSON fixture of dir as a seed.
func addFuzzFixtures(f *testing.F, dir string) {
	f.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no fixtures in %s: %v", dir, err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// fuzzPayloadLimit is EFFECTS_MAX_PAYLOAD_BYTES in the webhook fuzz: small,
// so that the fuzzer reaches the oversized-payload path.
const fuzzPayloadLimit = 64

// maxErrorReply bounds the text of a 4xx reply: it goes to Hasura's event
// log, and must say what is wrong without echoing a large input.
const maxErrorReply = 512

// FuzzWebhook posts arbitrary bodies to the webhook, with the right secret,
// and checks what it answers and what it publishes:
//   - it never panics, and answers 200, 400 or 413 (JetStream always acks
//     here), with a JSON body; a 4xx carries a short, non-empty error;
//   - a 200 publishes at most one message: for INSERT and MANUAL an effect
//     that decodes as effects.Effect with a valid kind matching its subject,
//     a UUID id, the body's payload (null as {}) within the limit, the
//     event id as Nats-Msg-Id, and that round-trips through encoding/json;
//     or the failed completion of the row, which effects.ParseCompletion
//     accepts, with a reason; UPDATE and DELETE publish nothing.
func FuzzWebhook(f *testing.F) {
	addFuzzFixtures(f, "testdata")
	for _, s := range []string{
		``, `{}`, `null`, `[]`, `"x"`, `{"id":1}`, `{"id":"e"}`, `{"id":"e","event":{}}`,
		`{"id":"e","event":{"op":"INSERT"}}`,
		`{"id":"e","event":{"op":"INSERT","data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"k"}}}}`,
		`{"id":"e","event":{"op":"INSERT","data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"k","payload":null}}}}`,
		`{"id":"e","event":{"op":"MANUAL","data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"a.b","payload":{}}}}}`,
		`{"id":"e","event":{"op":"INSERT","data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"k","payload":"` + strings.Repeat("x", fuzzPayloadLimit) + `"}}}}`,
		`{"id":"e","event":{"op":"INSERT","data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"k","created_at":"0000-01-01T00:30:00+01:00"}}}}`,
		`{"id":"e","event":{"op":"INSERT","session_variables":{"a":1},"data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"k"}}}}`,
		`{"id":"e","event":{"op":"DELETE","data":{"old":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"k"}}}}`,
		`{"id":"e","event":{"op":"INSERT","data":{"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"\u0000\u2028<>&"}}}}`,
		`{"ID":"e","Event":{"OP":"INSERT","Data":{"New":{"ID":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","Kind":"k","Payload":[1,2]}}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		js := &captureJS{}
		srv, err := New(Config{WebhookSecret: "s", MaxPayloadBytes: fuzzPayloadLimit}, js, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		srv.pub = js
		req := httptest.NewRequest(http.MethodPost, EventsPath, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(SecretHeader, "s")
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		msgs := js.take()

		var reply map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &reply); err != nil {
			t.Fatalf("reply %d is not a JSON object: %q: %v", rec.Code, rec.Body.String(), err)
		}
		switch rec.Code {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			msg, _ := reply["error"].(string)
			if msg == "" || len(msg) > maxErrorReply || !utf8.ValidString(msg) {
				t.Fatalf("%d reply's error is empty, over %d bytes or not UTF-8: %q", rec.Code, maxErrorReply, msg)
			}
			if len(msgs) != 0 {
				t.Fatalf("a %d reply published %d messages", rec.Code, len(msgs))
			}
			return
		case http.StatusOK:
		default:
			t.Fatalf("status %d (%s) for body %q", rec.Code, rec.Body.String(), body)
		}

		// A 200: the body was an event. Decode it independently, with the
		// same rules (encoding/json) that any consumer would use.
		var ev struct {
			ID    string
			Event struct {
				Op   string
				Data struct {
					New *struct {
						ID      string
						Kind    string
						Payload json.RawMessage
					}
				}
			}
		}
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Fatalf("200 for a body encoding/json refuses: %v", err)
		}
		if ignored, _ := reply["ignored"].(bool); ignored {
			if op := ev.Event.Op; op != opUpdate && op != opDelete {
				t.Fatalf("op %q ignored", op)
			}
			if len(msgs) != 0 {
				t.Fatalf("an ignored event published %d messages", len(msgs))
			}
			return
		}
		if len(msgs) != 1 {
			t.Fatalf("a 200 for an %s event published %d messages, want 1", ev.Event.Op, len(msgs))
		}
		row := ev.Event.Data.New
		if row == nil || !effects.IsUUID(row.ID) {
			t.Fatalf("published for a row without a UUID id: %+v", row)
		}
		m := msgs[0]
		if reason, ok := reply["rejected"].(string); ok {
			checkRejection(t, m, row.ID, ev.ID, reason)
			return
		}
		if reply["effect_id"] != row.ID || reply["event_id"] != ev.ID {
			t.Fatalf("reply %s names another effect or event than %s / %s", rec.Body.String(), row.ID, ev.ID)
		}
		eff := checkEffectMsg(t, m, ev.ID)
		if eff.ID != row.ID || eff.Kind != row.Kind {
			t.Fatalf("effect %s/%s, the row is %s/%s", eff.ID, eff.Kind, row.ID, row.Kind)
		}
		want := row.Payload
		if len(want) == 0 || string(want) == "null" {
			want = json.RawMessage("{}")
		}
		if !bytes.Equal(eff.Payload, want) {
			t.Fatalf("payload %s, the row's is %s: not byte for byte", eff.Payload, want)
		}
		if len(eff.Payload) > fuzzPayloadLimit {
			t.Fatalf("a payload of %d bytes was published, the limit is %d", len(eff.Payload), fuzzPayloadLimit)
		}
	})
}

// checkEffectMsg checks a published effect message and returns it decoded.
func checkEffectMsg(t *testing.T, m *nats.Msg, msgID string) effects.Effect {
	t.Helper()
	kind, ok := strings.CutPrefix(m.Subject, effects.SubjectPrefix)
	if !ok || effects.ValidateKind(kind) != nil {
		t.Fatalf("effect published on %q, not effects.<valid kind>", m.Subject)
	}
	if got := m.Header.Get(jetstream.MsgIDHeader); got != msgID || got == "" {
		t.Fatalf("Nats-Msg-Id %q, want %q", got, msgID)
	}
	var eff effects.Effect
	if err := json.Unmarshal(m.Data, &eff); err != nil {
		t.Fatalf("effect message %q does not decode: %v", m.Data, err)
	}
	// (created_at may be the zero time: a row may say 0001-01-01.)
	if eff.Kind != kind || !effects.IsUUID(eff.ID) || !json.Valid(eff.Payload) {
		t.Fatalf("effect %+v: want the subject's kind %q, a UUID id and a JSON payload", eff, kind)
	}
	// Encode and decode again: nothing changes.
	again, err := json.Marshal(eff)
	if err != nil {
		t.Fatalf("effect %+v does not encode again: %v", eff, err)
	}
	var back effects.Effect
	if err := json.Unmarshal(again, &back); err != nil {
		t.Fatal(err)
	}
	if back.ID != eff.ID || back.Kind != eff.Kind || !back.CreatedAt.Equal(eff.CreatedAt) ||
		!jsonEqual(back.Payload, eff.Payload) || len(back.SessionVariables) != len(eff.SessionVariables) {
		t.Fatalf("effect did not round-trip: %+v became %+v", eff, back)
	}
	return eff
}

// checkRejection checks the failed completion published for a row that can
// never succeed.
func checkRejection(t *testing.T, m *nats.Msg, effectID, eventID, reason string) {
	t.Helper()
	c, err := effects.ParseCompletion(m.Data)
	if err != nil {
		t.Fatalf("the failed completion %q does not parse: %v", m.Data, err)
	}
	if c.EffectID != effectID || c.Status != effects.StatusFailed || c.Error == nil || *c.Error != reason || reason == "" {
		t.Fatalf("failed completion %+v, want effect %s failed with %q", c, effectID, reason)
	}
	if len(reason) > maxErrorReply {
		t.Fatalf("reason of %d bytes: %q", len(reason), reason)
	}
	if m.Subject != effects.CompletedSubject(c.Kind) {
		t.Fatalf("completion of kind %q published on %s", c.Kind, m.Subject)
	}
	want := effects.CompletionMsgID(effects.Ref{ID: effectID, Kind: c.Kind, EventID: eventID}, effects.StatusFailed)
	if got := m.Header.Get(jetstream.MsgIDHeader); got != want {
		t.Fatalf("Nats-Msg-Id %q, want %q", got, want)
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y bytes.Buffer
	if json.Compact(&x, a) != nil || json.Compact(&y, b) != nil {
		return false
	}
	return bytes.Equal(x.Bytes(), y.Bytes())
}

var traceparentRE = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$`)

// FuzzTraceContext feeds arbitrary event.trace_context values and trace
// headers (traceparent, B3) to what turns them into the traceparent of the
// effect: it never fails or panics, and what it returns is "" or a valid W3C
// traceparent with non-zero ids, so a bad trace never turns an effect away
// nor goes out on a message.
func FuzzTraceContext(f *testing.F) {
	f.Add(`{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","sampling_state":"1"}`,
		"", "", "", "")
	f.Add(`null`, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", "", "")
	f.Add(`{"trace_id":"00000000000000000000000000000000","span_id":"00f067aa0ba902b7"}`,
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "1")
	f.Add(`{"trace_id":1,"span_id":[]}`, "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", "463ac35c9f6413ad", "a2fb4a1d1a96d312", "d")
	f.Add(`"x"`, "", "", "", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")
	f.Fuzz(func(t *testing.T, tcJSON, traceparentHeader, b3TraceID, b3SpanID, b3Other string) {
		var tc traceContext
		if err := tc.UnmarshalJSON([]byte(tcJSON)); err != nil {
			t.Fatalf("trace_context %q refused: %v", tcJSON, err)
		}
		if tc.parent != "" && !traceparentRE.MatchString(tc.parent) {
			t.Fatalf("trace_context %q gave traceparent %q", tcJSON, tc.parent)
		}
		h := http.Header{}
		for k, v := range map[string]string{"Traceparent": traceparentHeader, "X-B3-Traceid": b3TraceID,
			"X-B3-Spanid": b3SpanID, "X-B3-Sampled": b3Other, "B3": b3Other} {
			if v != "" {
				h.Set(k, v)
			}
		}
		checkCarried(t, tc.parent)
		p := headerParent(h)
		if p == "" {
			return
		}
		// What the propagators accept comes out as a traceparent, which
		// the ingest then continues on the message.
		if !traceparentRE.MatchString(p) || strings.Contains(p, strings.Repeat("0", 32)) || strings.Contains(p, "-"+strings.Repeat("0", 16)+"-") {
			t.Fatalf("headers %v gave traceparent %q", h, p)
		}
		checkCarried(t, p)
	})
}

// checkCarried checks that an effect message with parent carries what a
// non-recording span of parent would put on it (tracing is off here, and
// startPublish then starts no span): the propagator's round trip of parent.
func checkCarried(t *testing.T, parent string) {
	t.Helper()
	msg := &nats.Msg{Subject: "effects.k", Header: nats.Header{}}
	span := startPublish(parent, msg, "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11", "k")
	span.End()
	want := ""
	if parent != "" {
		ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": parent})
		c := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, c)
		want = c["traceparent"]
	}
	if tp := msg.Header.Get(TraceparentHeader); tp != want || tp != "" && !traceparentRE.MatchString(tp) {
		t.Fatalf("parent %q: message traceparent %q, want %q", parent, tp, want)
	}
}

// FuzzTableRow turns arbitrary rows into what the table source publishes
// (rowMsg, the code publishRow sends): a row either becomes an effect that
// decodes as effects.Effect with its id, kind and payload and round-trips,
// or the failed completion of the row with a reason — never a message a
// consumer cannot read, which would leave the row pending for ever.
func FuzzTableRow(f *testing.F) {
	const id = "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11"
	f.Add(id, "echo", true, `{"a":1}`, true, int64(1773480413589793))
	f.Add(id, "", true, `{}`, true, int64(0))
	f.Add(id, "not valid", true, `[]`, true, int64(-62135596800000000))
	f.Add(id, "completed", false, `null`, false, int64(253402300799999999))
	f.Add(id, "echo", true, `not json`, true, int64(253402300800000000))
	f.Add(id, "echo", true, `"`+strings.Repeat("x", fuzzPayloadLimit)+`"`, true, int64(-62135596800000001))
	f.Add(id, strings.Repeat("k", 300), true, "{\"\u2028\":\"<&>\"}", true, int64(1))
	f.Fuzz(func(t *testing.T, id, kind string, hasKind bool, payload string, hasPayload bool, createdAtMicros int64) {
		r := claimedRow{id: id, createdAt: time.UnixMicro(createdAtMicros).UTC()}
		if hasKind {
			r.kind = &kind
		}
		if hasPayload {
			r.payload = &payload
		}
		if !effects.IsUUID(id) {
			return // the id column is a uuid
		}
		src := &TableSource{cfg: TableConfig{MaxPayloadBytes: fuzzPayloadLimit}}
		m, _, rejected, err := src.rowMsg(r)
		if err != nil {
			t.Fatalf("row %+v: %v", r, err)
		}
		if rejected {
			c, err := effects.ParseCompletion(m.Data)
			if err != nil {
				t.Fatalf("the failed completion %q of row %+v does not parse: %v", m.Data, r, err)
			}
			if c.EffectID != id || c.Status != effects.StatusFailed || c.Error == nil || *c.Error == "" ||
				len(*c.Error) > maxErrorReply || m.Subject != effects.CompletedSubject(c.Kind) {
				t.Fatalf("failed completion %+v on %s for row %+v", c, m.Subject, r)
			}
			return
		}
		eff := checkEffectMsg(t, m, id)
		want := json.RawMessage(payload)
		if !hasPayload || payload == "null" {
			want = json.RawMessage("{}")
		}
		// A text payload column may hold white space around the JSON,
		// which the message's decoder drops: equal as JSON, not as bytes.
		if eff.ID != id || !hasKind || eff.Kind != kind || !jsonEqual(eff.Payload, want) ||
			!eff.CreatedAt.Equal(r.createdAt) || len(eff.Payload) > fuzzPayloadLimit {
			t.Fatalf("effect %+v for row %+v", eff, r)
		}
	})
}
