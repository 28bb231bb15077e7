package dispatcher

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/jsondec"
	"github.com/effects-run/effects/pkg/effects"
)

const decodeID = "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11"

// encodedEffects are effect messages as the ingest, the table source and
// the reconciler publish them (ingest.EffectMsg, the same code), with the
// payloads, kinds and times they carry; the fast path must take each.
func encodedEffects() [][]byte {
	var out [][]byte
	at := time.Date(2026, 3, 14, 9, 26, 53, 589793000, time.FixedZone("", 3600))
	for _, c := range []struct {
		kind    string
		payload string
		at      time.Time
	}{
		{"echo", `{"i":1}`, at},
		{"echo", ``, at.Truncate(time.Second)},
		{"echo", `null`, time.Time{}},
		{"other.kind", `[1,"<&>",{"a":"\u00e9\"}"}]`, at},
		{"echo", ` { "spaced" : [ 1 , 2 ] } `, at},
		{"echo", `"a string"`, time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"echo", `-1.5e3`, time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
	} {
		out = append(out, ingest.EffectMsg(decodeID, c.kind, []byte(c.payload), c.at, "ev").Data)
	}
	// A scheduled effect carries its run_at (the scheduler, a re-run).
	out = append(out, ingest.EffectMsgAt(decodeID, "echo", []byte(`{}`), at, at.Add(36*time.Hour), "schedule:"+decodeID).Data)
	// The webhook's messages carry Hasura's session variables as sent.
	out = append(out,
		[]byte(`{"id":"`+decodeID+`","kind":"echo","payload":{},"created_at":"2026-03-14T09:26:53.589793Z","session_variables":{"x-hasura-role":"user","x-hasura-user-id":"42"}}`),
		[]byte(`{"id":"`+decodeID+`","kind":"echo","payload":{},"created_at":"2026-03-14T09:26:53Z","session_variables":{}}`),
		[]byte(`{"id":"`+decodeID+`","kind":"echo","payload":{},"created_at":"2026-03-14T09:26:53Z","session_variables":{"x-hasura-note":"a \"quoted\"\nline \u2028 é"}}`),
	)
	return out
}

// oddEffects are bodies encoding/json decodes by rules the fast path
// leaves to it (or refuses); the fast path must hand each over.
var oddEffects = []string{
	`{"id":"a","id":"b"}`,
	`{"ID":"` + decodeID + `","KIND":"echo","Payload":"x"}`,
	`{"i\u0064":"` + decodeID + `"}`,
	"{\"id\":\"" + decodeID + "\",\"kind\":\"ech\xff\"}",
	`{"id":"` + decodeID + `","kind":"\ud83d\ude00"}`,
	`{"id":1}`,
	`{"id":"` + decodeID + `","created_at":"2026-03-14"}`,
	`{"id":"` + decodeID + `","created_at":"2026-03-14T09:26:53\u005a"}`,
	`{"id":"` + decodeID + `","created_at":5}`,
	`{"id":"` + decodeID + `","run_at":"tomorrow"}`,
	`{"id":"` + decodeID + `","run_at":"2026-03-14T09:26:53Z","run_at":null}`,
	`{"id":"` + decodeID + `","Run_At":"2026-03-14T09:26:53Z"}`,
	`{"id":"` + decodeID + `","session_variables":{"a":1}}`,
	`{"id":"` + decodeID + `","session_variables":[]}`,
	`{"id":"` + decodeID + `","ſession_variables":null}`,
	`null`, `[]`, `"x"`,
}

// decodeEffectJSON is decodeEffect as it was before the fast path: the
// reference FuzzDecodeEffectFast holds it to.
func decodeEffectJSON(data []byte, kind string) (effects.Effect, error) {
	var e effects.Effect
	if err := json.Unmarshal(data, &e); err != nil {
		return decodeError(data, kind, err)
	}
	return checkEffect(e, kind)
}

// FuzzDecodeEffectFast holds decodeEffect (the fast path, with its
// fallback) to encoding/json: the same effect and the same error for every
// body; and when the fast path takes a body on its own, encoding/json
// decodes it to the same effect.
func FuzzDecodeEffectFast(f *testing.F) {
	for _, b := range encodedEffects() {
		f.Add(b)
	}
	for _, s := range oddEffects {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		` { "id" : "` + decodeID + `" , "kind" : "echo" , "payload" : { } , "created_at" : null , "session_variables" : null } `,
		`{"id":"` + decodeID + `","kind":null,"payload":null,"extra":[{"id":"x"}],"session_variables":{"a":null,"a":"b"}}`,
		`{"id":"` + decodeID + `","kind":"other"}`, `{"id":"` + decodeID + `","kind":"ech\u006f"}`, `{"id":"x"}`, `{}`, ``, `{"id":"`,
		`{"id":"` + decodeID + `","payload":{"a":"}\"{"}}`, `{"id":"` + decodeID + `","created_at":"2026-03-14T09:26:53+05:30"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantErr := decodeEffectJSON(data, fuzzKind)
		got, gotErr := decodeEffect(data, fuzzKind)
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
			t.Fatalf("decodeEffect: %v; encoding/json: %v", gotErr, wantErr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeEffect\n got %#v\nwant %#v", got, want)
		}
		if !jsondec.Valid(data) {
			return
		}
		var fast effects.Effect
		if decodeEffectFast(data, fuzzKind, &fast) {
			var e effects.Effect
			if err := json.Unmarshal(data, &e); err != nil {
				t.Fatalf("the fast path took a body encoding/json refuses: %v", err)
			}
			if !reflect.DeepEqual(fast, e) {
				t.Fatalf("fast path\n got %#v\nwant %#v", fast, e)
			}
		}
	})
}

// TestDecodeEffectFastTakesEncoderOutput checks that the fast path, not the
// fallback, decodes what our publishers send, and hands over what
// encoding/json decodes its own way.
func TestDecodeEffectFastTakesEncoderOutput(t *testing.T) {
	for _, data := range encodedEffects() {
		var e effects.Effect
		if !jsondec.Valid(data) || !decodeEffectFast(data, "echo", &e) {
			t.Errorf("the fast path handed over %s", data)
		}
	}
	for _, s := range oddEffects {
		var e effects.Effect
		if jsondec.Valid([]byte(s)) && decodeEffectFast([]byte(s), "echo", &e) {
			t.Errorf("the fast path took %s, which encoding/json decodes its own way", s)
		}
	}
}

// TestDecodeEffectCopiesPayload checks that the effect does not share the
// message's bytes (as a json.RawMessage does not): the handler may keep the
// payload after the message is gone.
func TestDecodeEffectCopiesPayload(t *testing.T) {
	data := encodedEffects()[0]
	e, err := decodeEffect(data, "echo")
	if err != nil {
		t.Fatal(err)
	}
	want := string(e.Payload)
	for i := range data {
		data[i] = 'x'
	}
	if string(e.Payload) != want {
		t.Fatalf("payload changed with the message's bytes: %s", e.Payload)
	}
}

// BenchmarkDecodeEffect compares decodeEffect with the fast path and with
// encoding/json alone, on the message BenchmarkDispatch publishes.
func BenchmarkDecodeEffect(b *testing.B) {
	data := []byte(`{"id":"00000000-0000-4000-8000-000000000042","kind":"echo","payload":{"i":42},"created_at":"2026-03-14T09:26:53Z","session_variables":null}`)
	for _, c := range []struct {
		name   string
		decode func([]byte, string) (effects.Effect, error)
	}{{"fast", decodeEffect}, {"encoding-json", decodeEffectJSON}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.decode(data, "echo"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
