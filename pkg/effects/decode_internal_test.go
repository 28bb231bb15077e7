package effects

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/jsondec"
)

const decodeID = "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11"

// encodedCompletions are completion messages as the dispatcher, the
// ingest, the reconciler and Client.Publish write them (encodeCompletion):
// both statuses, errors with quotes, newlines and control characters, JSON
// completions of each kind, times in and out of UTC; the fast path must
// take each.
func encodedCompletions(t testing.TB) [][]byte {
	boom := "boom"
	odd := "kind \"x\" failed:\n\tat line 1 \x00 \u2028 é <&> \xff"
	empty := ""
	at := time.Date(2026, 3, 14, 9, 26, 53, 589793000, time.UTC)
	var out [][]byte
	for _, c := range []Completion{
		{EffectID: decodeID, Kind: "echo", Status: StatusSucceeded, Completion: json.RawMessage(`{"status":200,"body":{"ok":true}}`), Attempts: 1, CompletedAt: at},
		{EffectID: decodeID, Kind: "echo", Status: StatusFailed, Error: &boom, Attempts: 5, CompletedAt: at.In(time.FixedZone("", -7*3600))},
		{EffectID: decodeID, Kind: "a.b-c_d", Status: StatusFailed, Error: &odd, CompletedAt: at.In(time.FixedZone("", 5*3600+1800))},
		{EffectID: decodeID, Kind: "echo", Status: StatusSucceeded, Completion: json.RawMessage(` [1, "x", null, -1.5e3] `), Error: &empty, Attempts: 2, CompletedAt: at.Truncate(time.Second)},
		{EffectID: decodeID, Kind: "echo", Status: StatusSucceeded, Completion: json.RawMessage(`null`), Attempts: 1, CompletedAt: at},
		{EffectID: decodeID, Kind: "echo", Status: StatusSucceeded, Completion: json.RawMessage(`"text"`), Attempts: 1 << 40, CompletedAt: at},
		{EffectID: decodeID, Kind: "echo", Status: StatusSucceeded, Completion: json.RawMessage(`{"s":"\u00e9\"}"}`), Attempts: 1, CompletedAt: at},
	} {
		b, err := encodeCompletion(c)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// oddCompletions are bodies encoding/json decodes by rules the fast path
// leaves to it (or refuses); the fast path must hand each over.
var oddCompletions = []string{
	`{"effect_id":"a","effect_id":"b"}`,
	`{"Effect_ID":"` + decodeID + `","status":"failed"}`,
	`{"effect_\u0069d":"` + decodeID + `"}`,
	"{\"error\":\"bad \xff\"}",
	`{"error":"\ud83d\ude00"}`,
	`{"attempts":1.5}`, `{"attempts":1e2}`, `{"attempts":"1"}`, `{"attempts":99999999999999999999}`,
	`{"completed_at":"2026-03-14"}`, `{"completed_at":5}`, `{"completed_at":"2026-03-14T09:26:53\u005a"}`,
	`{"error":1}`, `{"status":true}`, `{"kind":{}}`, `{"ſtatus":"failed"}`,
	`null`, `[]`, `"x"`,
}

// parseCompletionJSON is ParseCompletion as it was before the fast path:
// the reference FuzzParseCompletionFast holds it to.
func parseCompletionJSON(data []byte) (Completion, error) {
	var c Completion
	if err := json.Unmarshal(data, &c); err != nil {
		return Completion{}, fmt.Errorf("%w: %s", ErrMalformedCompletion, cutText(err.Error(), 256))
	}
	if err := c.Validate(); err != nil {
		return Completion{}, err
	}
	return c, nil
}

// FuzzParseCompletionFast holds ParseCompletion (the fast path, with its
// fallback) to encoding/json: the same completion and the same error for
// every body; and when the fast path takes a body on its own, encoding/json
// decodes it to the same completion.
func FuzzParseCompletionFast(f *testing.F) {
	for _, b := range encodedCompletions(f) {
		f.Add(b)
	}
	for _, s := range oddCompletions {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		` { "effect_id" : "` + decodeID + `" , "status" : "succeeded" , "completion" : { } , "error" : null , "attempts" : null , "completed_at" : "2026-03-14T09:26:53Z" , "x" : [ ] } `,
		`{"effect_id":"` + decodeID + `","status":"pending","completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"` + decodeID + `","status":"succ\u0065eded","attempts":-0,"completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"` + decodeID + `","status":"failed","attempts":-1,"completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"` + decodeID + `","status":"failed","completed_at":null}`, `{}`, ``, `{"completion":{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantErr := parseCompletionJSON(data)
		got, gotErr := ParseCompletion(data)
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
			t.Fatalf("ParseCompletion: %v; encoding/json: %v", gotErr, wantErr)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ParseCompletion\n got %#v\nwant %#v", got, want)
		}
		if !jsondec.Valid(data) {
			return
		}
		var fast Completion
		if parseCompletionFast(data, &fast) {
			var c Completion
			if err := json.Unmarshal(data, &c); err != nil {
				t.Fatalf("the fast path took a body encoding/json refuses: %v", err)
			}
			if !reflect.DeepEqual(fast, c) {
				t.Fatalf("fast path\n got %#v\nwant %#v", fast, c)
			}
		}
	})
}

// TestParseCompletionFastTakesEncoderOutput checks that the fast path, not
// the fallback, decodes what our publishers send, and hands over what
// encoding/json decodes its own way.
func TestParseCompletionFastTakesEncoderOutput(t *testing.T) {
	for _, data := range encodedCompletions(t) {
		var c Completion
		if !jsondec.Valid(data) || !parseCompletionFast(data, &c) {
			t.Errorf("the fast path handed over %s", data)
		}
	}
	for _, s := range oddCompletions {
		var c Completion
		if jsondec.Valid([]byte(s)) && parseCompletionFast([]byte(s), &c) {
			t.Errorf("the fast path took %s, which encoding/json decodes its own way", s)
		}
	}
}

// TestParseCompletionCopiesCompletion checks that the completion does not
// share the message's bytes (as a json.RawMessage does not): the completer
// writes it after the message is gone.
func TestParseCompletionCopiesCompletion(t *testing.T) {
	data := encodedCompletions(t)[0]
	c, err := ParseCompletion(data)
	if err != nil {
		t.Fatal(err)
	}
	want := string(c.Completion)
	for i := range data {
		data[i] = 'x'
	}
	if string(c.Completion) != want {
		t.Fatalf("completion changed with the message's bytes: %s", c.Completion)
	}
}

// BenchmarkParseCompletion compares ParseCompletion with the fast path and
// with encoding/json alone, on a completion as the dispatcher writes it.
func BenchmarkParseCompletion(b *testing.B) {
	data := encodedCompletions(b)[0]
	for _, c := range []struct {
		name  string
		parse func([]byte) (Completion, error)
	}{{"fast", ParseCompletion}, {"encoding-json", parseCompletionJSON}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.parse(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
