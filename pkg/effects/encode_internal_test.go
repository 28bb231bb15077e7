package effects

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// TestEncodeCompletionMatchesEncodeJSON: the hand-written encoder writes
// what EncodeJSON writes, byte for byte, for random completions: strings
// with quotes, control characters, HTML characters, U+2028, invalid UTF-8;
// completions with whitespace, nil, invalid; times in several zones.
func TestEncodeCompletionMatchesEncodeJSON(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(7, 9))
	pieces := []string{"a", "é", "\"", "\\", "\n", "\t", "\x00", "\x1f", "<", ">", "&", "\u2028", "\u2029", "\xff", "\xc3", "日本", " ", "\x7f", "/"}
	str := func() string {
		var b []byte
		for range rng.IntN(12) {
			b = append(b, pieces[rng.IntN(len(pieces))]...)
		}
		return string(b)
	}
	raws := []json.RawMessage{nil, json.RawMessage(`null`), json.RawMessage(`{"a": 1,  "b" : [1, 2, {"c":"<&>"}]}`),
		json.RawMessage(" \n\"x\"\t"), json.RawMessage(`1e1000000`), json.RawMessage(`"\u2028 \ud800"`), json.RawMessage(`[]`),
		json.RawMessage(`{`), json.RawMessage(`"a"  "b"`)}
	zones := []*time.Location{time.UTC, time.FixedZone("x", 3600+1800), time.FixedZone("y", -7*3600), time.FixedZone("odd", 61)}
	for i := 0; i < 20000; i++ {
		c := Completion{EffectID: str(), Kind: str(), Status: Status(str()), Completion: raws[rng.IntN(len(raws))],
			Attempts:    rng.IntN(2000) - 1000,
			CompletedAt: time.Unix(rng.Int64N(1<<34)-1<<33, rng.Int64N(1e9)).In(zones[rng.IntN(len(zones))])}
		if rng.IntN(2) == 0 {
			e := str()
			c.Error = &e
		}
		if i%500 == 0 {
			c.CompletedAt = time.Date(10000+rng.IntN(10), 1, 1, 0, 0, 0, 0, time.UTC)
		}
		want, wantErr := EncodeJSON(c)
		got, gotErr := encodeCompletion(c)
		if (wantErr != nil) != (gotErr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("%+v:\n got %s (%v)\nwant %s (%v)", c, got, gotErr, want, wantErr)
		}
	}
}

func BenchmarkEncodeCompletion(b *testing.B) {
	e := "boom <&>"
	c := Completion{EffectID: "00000000-0000-4000-8000-000000000001", Kind: "echo", Status: StatusSucceeded,
		Completion: json.RawMessage(`{"i":1,"to":"ops@example.com"}`), Error: &e, Attempts: 1, CompletedAt: time.Now()}
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = encodeCompletion(c)
		}
	})
	b.Run("EncodeJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = EncodeJSON(c)
		}
	})
}
