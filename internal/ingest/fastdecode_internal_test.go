package ingest

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
)

// fastDecodeSeeds are bodies that the fast decoder must decode as
// encoding/json does, or hand over to it: Hasura's shapes, nulls where
// fields may be null, wrong types, duplicates, keys in another case,
// escapes and invalid UTF-8.
var fastDecodeSeeds = []string{
	`{"id":"e","created_at":"2026-03-14T09:26:53.589793","trigger":{"name":"t"},"table":{"schema":"public","name":"effects"},` +
		`"event":{"op":"INSERT","session_variables":{"x-hasura-role":"admin"},"trace_context":{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","sampling_state":"1"},` +
		`"data":{"old":null,"new":{"id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"k","payload":{"a":[1,2,{"b":"}"}]},"status":"pending","created_at":"2026-03-14T09:26:53.589793+00:00","attempts":0}}},` +
		`"delivery_info":{"current_retry":0,"max_retries":5}}`,
	` { "id" : "e" , "event" : { "op" : "MANUAL" , "data" : { "new" : { "id" : "i" , "kind" : null , "payload" : null } } } } `,
	`{"id":"e","event":null}`,
	`{"id":null,"created_at":null,"event":{"op":null,"session_variables":null,"trace_context":null,"data":null}}`,
	`{"id":"e","event":{"op":"INSERT","data":{"old":{"kind":"o"},"new":null}}}`,
	`{"id":1}`, `{"id":"e","event":"x"}`, `{"id":"e","event":{"data":[]}}`, `{"id":"e","event":{"op":true}}`,
	`{"id":"e","event":{"data":{"new":{"kind":5}}}}`, `{"id":"e","event":{"data":{"new":"x"}}}`,
	`{"id":"a","id":"b"}`, `{"event":{"op":"INSERT"},"event":{"data":{}}}`,
	`{"ID":"e","Event":{"OP":"INSERT","Data":{"New":{"ID":"i","Kind":"k","Payload":[1,2]}}}}`,
	`{"id":"e","iD":"f"}`, `{"i\u0064":"e"}`, `{"id":"\u00e9\n"}`, "{\"id\":\"\xff\"}", `{"id":"é"}`,
	`{"id":"e","event":{"data":{"new":{"kind":"\u2028"}}}}`, "{\"id\":\"e\",\"event\":{\"data\":{\"new\":{\"kind\":\"k\xc3\"}}}}",
	`{"id":"e","event":{"op":"INSERT","session_variables":[1,"]"],"trace_context":"x","data":{"new":{"payload":-1.5e3}}}}`,
	`null`, `[]`, `"x"`, `{}`, `{"a":{"b":[{"c":"\"}"}]}}`,
}

// FuzzDecodeEventFast holds decodeEvent (the fast path, with its fallback)
// to json.Unmarshal: for every valid JSON body both give the same event, or
// both fail; and when the fast path takes a body, it agrees on its own.
func FuzzDecodeEventFast(f *testing.F) {
	addFuzzFixtures(f, "testdata")
	for _, s := range fastDecodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var want hasuraEvent
		wantErr := json.Unmarshal(body, &want)
		var got hasuraEvent
		gotErr := decodeEvent(body, &got)
		if (wantErr == nil) != (gotErr == nil) {
			t.Fatalf("encoding/json: %v; decodeEvent: %v", wantErr, gotErr)
		}
		if wantErr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeEvent\n got %+v\nwant %+v", describe(got), describe(want))
		}
		if !json.Valid(body) {
			return
		}
		var fast hasuraEvent
		if decodeEventFast(body, &fast) {
			if wantErr != nil {
				t.Fatalf("the fast path took a body encoding/json refuses: %v", wantErr)
			}
			if !reflect.DeepEqual(fast, want) {
				t.Fatalf("fast path\n got %+v\nwant %+v", describe(fast), describe(want))
			}
		}
	})
}

// TestDecodeEventFastTakesHasuraBodies checks that the fast path, not the
// fallback, decodes what Hasura sends: the fixtures and the benchmark's body.
func TestDecodeEventFastTakesHasuraBodies(t *testing.T) {
	bodies := []string{fastDecodeSeeds[0], fastDecodeSeeds[1], fastDecodeSeeds[3]}
	for _, name := range []string{"insert.json", "insert-v1-sql-write.json", "manual.json", "update.json"} {
		bodies = append(bodies, string(readFixture(t, name)))
	}
	for _, body := range bodies {
		var ev hasuraEvent
		if !decodeEventFast([]byte(body), &ev) {
			t.Errorf("the fast path handed over %s", body)
		}
	}
	for _, body := range []string{`{"id":"a","id":"b"}`, `{"ID":"e"}`, `{"id":"\u0065"}`, `{"id":1}`, "{\"id\":\"\xff\"}"} {
		var ev hasuraEvent
		if decodeEventFast([]byte(body), &ev) {
			t.Errorf("the fast path took %s, which encoding/json decodes its own way", body)
		}
	}
}

// describe shows an event with its pointers followed, for a failure message.
func describe(ev hasuraEvent) string {
	b, _ := json.Marshal(struct {
		hasuraEvent
		Trace string
	}{ev, traceOf(ev)})
	return string(b)
}

func traceOf(ev hasuraEvent) string {
	if ev.Event == nil {
		return ""
	}
	return ev.Event.TraceContext.parent
}

// BenchmarkDecodeEvent compares the fast path with encoding/json on a body
// like the ones Hasura sends (and make bench POSTs).
func BenchmarkDecodeEvent(b *testing.B) {
	body := readFixture(b, "insert.json")
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var ev hasuraEvent
			if err := decodeEvent(body, &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var ev hasuraEvent
			if err := json.Unmarshal(body, &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestHeaderParentEachPropagator checks that headerParent's shortcut (no
// trace header, no propagators) still hands each header the propagators
// read to them, whatever case the client wrote it in.
func TestHeaderParentEachPropagator(t *testing.T) {
	const want = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for name, h := range map[string]map[string]string{
		"traceparent": {"traceparent": want},
		"B3 multiple": {"x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736", "X-B3-SpanId": "00f067aa0ba902b7", "X-B3-Sampled": "1"},
		"B3 single":   {"b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"},
	} {
		hdr := http.Header{}
		for k, v := range h {
			hdr.Set(k, v)
		}
		if got := headerParent(hdr); got != want {
			t.Errorf("%s: headerParent = %q, want %q", name, got, want)
		}
	}
	if got := headerParent(http.Header{"Content-Type": {"application/json"}}); got != "" {
		t.Errorf("no trace headers: headerParent = %q", got)
	}
}
