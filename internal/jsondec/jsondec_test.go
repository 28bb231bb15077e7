package jsondec

import (
	"bytes"
	"encoding/json"
	"testing"
)

// validSeeds are JSON texts, valid and not, for the fuzz targets.
var validSeeds = []string{
	`{"id":"e","created_at":"2026-03-14T09:26:53.589793","event":{"op":"INSERT","data":{"new":{"payload":{"a":[1,2,{"b":"}"}]}}}}}`,
	` { "id" : "e" , "event" : { "op" : "MANUAL" } } `, `{"id":"a","id":"b"}`, `{"i\u0064":"e"}`, `{"id":"\u00e9\n"}`,
	"{\"id\":\"\xff\"}", `{"id":"é"}`, `null`, `[]`, `"x"`, `{}`, `{"a":{"b":[{"c":"\"}"}]}}`,
	``, ` `, `0`, `-0`, `01`, `-`, `1.`, `1.5e`, `1e+5`, `1E-05`, `.5`, `+1`, `tru`, `true `, `nul`, `nulll`,
	`"\u12"`, `"\u12g4"`, `"\x"`, "\"\x01\"", "\"\xff\"", `"\/"`, `[1,]`, `[,1]`, `{"a"}`, `{"a":}`, `{"a":1,}`,
	`{1:2}`, `[1 2]`, `{"a":1 "b":2}`, `[[[]]]`, `{} {}`, "\t[\r\n]\n",
}

// FuzzValid holds Valid to json.Valid: it may refuse a valid text (then
// encoding/json decodes it), never accept an invalid one.
func FuzzValid(f *testing.F) {
	for _, s := range validSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if Valid(body) && !json.Valid(body) {
			t.Fatalf("Valid accepts %q, which json.Valid refuses", body)
		}
		if !Valid(body) && json.Valid(body) && len(body) < MaxDepth {
			t.Fatalf("Valid refuses %q, which json.Valid accepts", body)
		}
	})
}

// stringSeeds are JSON strings: what internal/jsonenc writes (escapes of
// quote, backslash, control characters, U+2028, U+2029 and U+FFFD) and
// what String hands over (surrogates, invalid UTF-8).
var stringSeeds = []string{
	`""`, `"plain"`, `"quote \" backslash \\ slash \/"`, `"\b\f\n\r\t"`, `"\u0000\u001f\u007f"`, `"\u2028\u2029"`,
	`"\ufffd bad"`, `"\u00e9\u00E9 é ✓ 😀"`, `"\ud83d\ude00"`, `"\ud83d"`, `"\ude00x"`, "\"\xff\"", "\"a\\n\xe2\x82\"",
	`"` + string(make([]byte, 200)) + `"`, `"` + "x\\n" + string(make([]byte, 150)) + `"`, `null`, `1`, `{}`,
}

// FuzzString holds Decoder.String to json.Unmarshal into a string: the same
// string whenever String takes the text.
func FuzzString(f *testing.F) {
	for _, s := range stringSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if !Valid(body) {
			return
		}
		var want string
		wantErr := json.Unmarshal(body, &want)
		i := SkipSpace(body, 0)
		d := New(body)
		got, end, ok := d.String(i)
		if !ok {
			return
		}
		if wantErr != nil {
			t.Fatalf("String took %q, which encoding/json refuses: %v", body, wantErr)
		}
		if got != want {
			t.Fatalf("String(%q) = %q, encoding/json decodes %q", body, got, want)
		}
		if SkipSpace(body, end) != len(body) {
			t.Fatalf("String(%q) ended at %d", body, end)
		}
	})
}

// TestStringTakesEncoderOutput checks that String, not encoding/json,
// decodes every escape internal/jsonenc writes, and hands over what
// encoding/json decodes by rules of its own.
func TestStringTakesEncoderOutput(t *testing.T) {
	for _, s := range []string{`"plain"`, `"\"\\\b\f\n\r\t\u0000\u001f\u2028\u2029\ufffd"`, `"é ✓"`} {
		d := New([]byte(s))
		if _, _, ok := d.String(0); !ok {
			t.Errorf("String handed %s over", s)
		}
	}
	for _, s := range []string{`"\ud83d\ude00"`, `"\ud83d"`, "\"\xff\"", "\"\\n\xff\""} {
		d := New([]byte(s))
		if _, _, ok := d.String(0); ok {
			t.Errorf("String took %s, which encoding/json decodes its own way", s)
		}
	}
}

// FuzzAppendCompact holds AppendCompact to json.Compact for every text
// Valid accepts.
func FuzzAppendCompact(f *testing.F) {
	for _, s := range validSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("[\"\u2028 <&> \xff\", 1 ]"))
	f.Add([]byte(" {\"a\" : [ 1 , \"x \\\" y\" ,\t{ } ] ,\n\"b\":\"\\\\\"}\r\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		if !Valid(src) {
			return
		}
		var want bytes.Buffer
		want.WriteString("prefix")
		if err := json.Compact(&want, src); err != nil {
			t.Fatalf("json.Compact refuses %q, which Valid accepts: %v", src, err)
		}
		if got := AppendCompact([]byte("prefix"), src); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("AppendCompact(%q) = %q, json.Compact writes %q", src, got, want.Bytes())
		}
	})
}
