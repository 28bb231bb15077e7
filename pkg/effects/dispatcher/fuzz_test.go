package dispatcher

// Fuzz targets for what the dispatcher reads from outside: an effect
// message on effects.<kind>, from the ingest or any other publisher, with its
// headers (Nats-Msg-Id, traceparent, tracestate); and the per-kind settings
// EFFECTS_KIND_CONCURRENCY and EFFECTS_KIND_RATE. Their seed corpus (f.Add
// seeds and testdata/fuzz/<FuzzName>/) runs in every `go test`; `make fuzz`
// fuzzes them.

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
)

// fuzzKind is the kind of the consumer the fuzzed messages arrive on.
const fuzzKind = "echo"

// maxDecodeError bounds the reason a malformed message gives: it becomes the
// row's error and a log line, and must not echo a large message.
const maxDecodeError = 512

// FuzzDecodeEffect gives arbitrary bodies and headers to what the dispatcher
// does with a delivery before its handler runs (decodeEffect, the event id
// from Nats-Msg-Id, the trace from traceparent/tracestate):
//   - no panic, and the trace headers never fail a delivery;
//   - a decoded effect has a UUID id, the subject's kind and a JSON payload,
//     and encoding it again decodes to the same effect;
//   - a refused one still carries the subject's kind (its failure goes to
//     that kind's completion subject), its id only when it is a UUID-shaped
//     value read from the body, and a short reason;
//   - the completion of either has a valid message id and passes
//     effects.Completion.Validate whenever the id is a UUID.
func FuzzDecodeEffect(f *testing.F) {
	const id = "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11"
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, s := range []struct{ data, msgID, traceparent, tracestate string }{
		{`{"id":"` + id + `","kind":"echo","payload":{"a":1},"created_at":"2026-03-14T09:26:53.589793Z","session_variables":{"x-hasura-role":"user"}}`, "85558393-c75d-4d2f-9c15-e80591b83894", tp, "vendor=x"},
		{`{"id":"` + id + `","kind":"echo","payload":null,"created_at":"2026-03-14T09:26:53Z","session_variables":null}`, id, "", ""},
		{`{"id":"` + id + `","payload":[1,"<&>"]}`, "", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{`{"id":"` + id + `","kind":"other","payload":{}}`, "e", "zz", "a=b,c"},
		{`{"id":"` + id + `","kind":"echo","payload":{},"created_at":"-0001-12-31T23:30:00Z"}`, "e", "", ""},
		{`{"id":"` + id + `","kind":"echo","payload":{},"created_at":"` + strings.Repeat("9", 600) + `"}`, "e", "", ""},
		{`{"id":"` + strings.Repeat("x", 600) + `","kind":"echo"}`, "e", "", ""},
		{`{"id":"` + id + `","kind":"` + strings.Repeat("k", 600) + `"}`, "e", "", ""},
		{`{"id":"` + id + `","kind":"echo","session_variables":{"a":1}}`, "e", "", ""},
		{`{"id":"` + id + `"`, "e", "", ""},
		{``, "", "", ""},
		{`[]`, "", "", ""},
		{`{"ID":"` + id + `","KIND":"echo","Payload":"x"}`, "e", tp, strings.Repeat("k=v,", 40)},
	} {
		f.Add([]byte(s.data), s.msgID, s.traceparent, s.tracestate)
	}
	f.Fuzz(func(t *testing.T, data []byte, msgID, traceparent, tracestate string) {
		eff, err := decodeEffect(data, fuzzKind)
		if eff.Kind != fuzzKind {
			t.Fatalf("decoded kind %q on a consumer of %q (error %v)", eff.Kind, fuzzKind, err)
		}
		if err != nil {
			if msg := err.Error(); msg == "" || len(msg) > maxDecodeError {
				t.Fatalf("error of %d bytes: %.200q", len(msg), msg)
			}
			if eff.ID != "" && !utf8.ValidString(eff.ID) {
				t.Fatalf("refused effect keeps id %q", eff.ID)
			}
		} else {
			if !effects.IsUUID(eff.ID) || !json.Valid(eff.Payload) {
				t.Fatalf("accepted effect %+v: want a UUID id and a JSON payload", eff)
			}
			again, err := json.Marshal(eff)
			if err != nil {
				// encoding/json writes no year outside 0 to 9999; the
				// message's created_at was one it can read, so this is
				// a bug.
				t.Fatalf("accepted effect %+v does not encode: %v", eff, err)
			}
			back, err := decodeEffect(again, fuzzKind)
			if err != nil {
				t.Fatalf("re-encoded effect %s refused: %v", again, err)
			}
			if back.ID != eff.ID || back.Kind != eff.Kind || !back.CreatedAt.Equal(eff.CreatedAt) ||
				!sameJSON(back.Payload, eff.Payload) || !maps.Equal(back.SessionVariables, eff.SessionVariables) {
				t.Fatalf("effect did not round-trip:\n%+v\n%+v", eff, back)
			}
		}

		// The headers: the event id the completion's message id is made
		// of, and the trace the attempt continues.
		h := nats.Header{}
		if msgID != "" {
			h.Set(jetstream.MsgIDHeader, msgID)
		}
		if traceparent != "" {
			h.Set("traceparent", traceparent)
		}
		if tracestate != "" {
			h.Set("tracestate", tracestate)
		}
		eff.EventID = h.Get(jetstream.MsgIDHeader)
		ctx, span := startAttempt(context.Background(), h, fuzzKind, eff.ID, 1)
		span.End()
		if sc := span.SpanContext(); sc.IsRemote() {
			t.Fatalf("the attempt's span is the remote parent itself")
		}
		_ = ctx
		if !effects.IsUUID(eff.ID) {
			return
		}
		reason := "boom"
		c := effects.Completion{EffectID: eff.ID, Kind: eff.Kind, Status: effects.StatusFailed, Error: &reason, Attempts: 1, CompletedAt: time.Now()}
		msg, err := effects.CompletionMsg(eff.Ref(), c)
		if err != nil || c.Validate() != nil {
			t.Fatalf("completion of %+v: %v, %v", eff, err, c.Validate())
		}
		if got := msg.Header.Get(jetstream.MsgIDHeader); !strings.HasPrefix(got, eff.ID+":") {
			t.Fatalf("completion message id %q", got)
		}
		injectTrace(&delivery{trace: span.SpanContext()}, msg)
		if tp := http.Header(msg.Header).Get("Traceparent"); tp != "" && len(tp) != 55 {
			t.Fatalf("completion traceparent %q", tp)
		}
	})
}

// sameJSON reports whether a and b are the same JSON value (encoding/json
// may escape '<', '>' and '&' where the publisher did not).
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// FuzzKindSettings checks EFFECTS_KIND_CONCURRENCY and EFFECTS_KIND_RATE:
// no panic; a refusal quotes the setting it names at most once (%q may make
// a byte four); what is accepted names valid kinds
// once each, with a concurrency of at least 1 and a rate that the limiter
// can space (an interval of at least a nanosecond) and that prints back to
// the same rate.
func FuzzKindSettings(f *testing.F) {
	for _, s := range []string{"", "send_email=5,http_request=50", " a = 1 , , b=2 ", "a=0", "a=-1", "a=x", "a",
		"a=1,a=2", "completed=1", "a.b=1", "a=+3", "a=99999999999999999999", "send_email=10/s,sms=600/m,report=2/h",
		"a=10/d", "a=0/s", "a=/s", "a=1/", "a=1000000001/s", "a=3600000000001/h", "a=1/s/s", "=1", "a==1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		conc, err := ParseKindConcurrency(s)
		if err != nil {
			if len(err.Error()) > maxDecodeError+4*len(s) {
				t.Fatalf("error of %d bytes for %d bytes of setting", len(err.Error()), len(s))
			}
		} else {
			for k, n := range conc {
				if effects.ValidateKind(k) != nil || n < 1 {
					t.Fatalf("ParseKindConcurrency(%q) accepted %s=%d", s, k, n)
				}
			}
		}
		rates, err := ParseKindRate(s)
		if err != nil {
			if len(err.Error()) > maxDecodeError+4*len(s) {
				t.Fatalf("error of %d bytes for %d bytes of setting", len(err.Error()), len(s))
			}
			return
		}
		for k, r := range rates {
			if effects.ValidateKind(k) != nil || r.N < 1 || r.Interval() <= 0 {
				t.Fatalf("ParseKindRate(%q) accepted %s=%+v (interval %s)", s, k, r, r.Interval())
			}
			if (effects.KindOptions{Rate: r}).Validate() != nil {
				t.Fatalf("ParseKindRate(%q) accepted %s=%s, which a registration refuses: %v", s, k, r, (effects.KindOptions{Rate: r}).Validate())
			}
			back, err := ParseRate(r.String())
			if err != nil || back != r {
				t.Fatalf("rate %+v prints as %q, which reads back as %+v, %v", r, r.String(), back, err)
			}
		}
	})
}
