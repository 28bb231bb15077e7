package completer

// A fuzz target for the completer's decoder of completion messages, which
// any process may publish. Its seed corpus (f.Add seeds and
// testdata/fuzz/FuzzParseItem/) runs in every `go test`; `make fuzz` fuzzes
// it.

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/effects-run/effects/pkg/effects"
)

// maxReasonText bounds why a completion is malformed: it is logged and sent
// as the Term reason, and must not echo a large message.
const maxReasonText = 512

// FuzzParseItem checks parseItem, which decides whether a completion message
// is written or terminated as malformed: no panic; a refusal wraps
// effects.ErrMalformedCompletion with a short reason; an accepted item has
// the id bytes of its UUID, attempts that fit the int column, an error
// without NUL (PostgreSQL text refuses it) and a completion that is absent
// or JSON other than null, and agrees with effects.ParseCompletion.
func FuzzParseItem(f *testing.F) {
	for _, s := range []string{
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"echo","status":"succeeded","completion":{"a":1},"error":null,"attempts":1,"completed_at":"2026-03-14T09:26:53.589793Z"}`,
		`{"effect_id":"0D8A6F4E-2B1C-4C6E-9A0F-5F3D2E1B7C11","kind":"x y","status":"failed","completion":null,"error":"a\u0000b","attempts":0,"completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"succeeded","completion":"\u0000","attempts":2147483648,"completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"succeeded","completion":  null  ,"completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"` + strings.Repeat("x", 600) + `","status":"succeeded","completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"` + strings.Repeat("s", 600) + `","completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"failed","completed_at":"` + strings.Repeat("9", 600) + `"}`,
		``, `{}`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		it, err := parseItem(data)
		c, perr := effects.ParseCompletion(data)
		if err != nil {
			if !errors.Is(err, effects.ErrMalformedCompletion) {
				t.Fatalf("error %q does not wrap ErrMalformedCompletion", err)
			}
			if msg := err.Error(); len(msg) > maxReasonText || !utf8.ValidString(msg) {
				t.Fatalf("reason of %d bytes: %.200q", len(msg), msg)
			}
			if perr == nil && c.Attempts <= math.MaxInt32 {
				t.Fatalf("parseItem refused what ParseCompletion accepts: %v", err)
			}
			return
		}
		if perr != nil {
			t.Fatalf("parseItem accepted what ParseCompletion refuses: %v", perr)
		}
		want, _ := hex.DecodeString(strings.ReplaceAll(it.comp.EffectID, "-", ""))
		if string(it.id[:]) != string(want) {
			t.Fatalf("id %x for effect_id %q", it.id, it.comp.EffectID)
		}
		if it.comp.Attempts < 0 || it.comp.Attempts > math.MaxInt32 {
			t.Fatalf("attempts %d accepted", it.comp.Attempts)
		}
		if it.comp.Error != nil && strings.IndexByte(*it.comp.Error, 0) >= 0 {
			t.Fatalf("error %q keeps a NUL", *it.comp.Error)
		}
		if it.completion != nil && (!json.Valid(it.completion) || string(it.completion) == "null") {
			t.Fatalf("completion %q", it.completion)
		}
	})
}
