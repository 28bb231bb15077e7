package effects_test

// Fuzz targets for the wire contract's decoders: a completion message (what
// the completer, `effects tail` and ConsumeCompletions read, from any
// publisher), and the kind and id checks every decoder and the CLI lean on.
// Their seed corpus (f.Add seeds and testdata/fuzz/<FuzzName>/) runs in every
// `go test`; `make fuzz` fuzzes them.

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
)

// FuzzParseCompletion checks effects.ParseCompletion on arbitrary bodies:
// no panic; a refusal wraps ErrMalformedCompletion with a bounded message;
// an accepted completion is valid (UUID effect id, a final status,
// attempts >= 0, a completed_at, JSON or no completion), encodes to a
// message (CompletionMsg) on its kind's subject, and decodes from it to the
// same completion.
func FuzzParseCompletion(f *testing.F) {
	for _, s := range []string{
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"echo","status":"succeeded","completion":{"a":1},"error":null,"attempts":1,"completed_at":"2026-03-14T09:26:53.589793Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"not valid","status":"failed","completion":null,"error":"boom","attempts":0,"completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0D8A6F4E-2B1C-4C6E-9A0F-5F3D2E1B7C11","status":"failed","error":"\u0000<&>\u2028","attempts":2147483648,"completed_at":"9999-12-31T23:59:59.999999999+14:00"}`,
		`{"effect_id":"x","status":"succeeded","completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"pending","completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"succeeded","attempts":-1,"completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"succeeded","attempts":1.5,"completed_at":"2026-03-14T09:26:53Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"succeeded","completed_at":"0000-01-01T00:00:00Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"succeeded","completed_at":"0001-01-01T00:00:00Z"}`,
		`{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","status":"succeeded","completed_at":"0000-01-01T00:00:00+01:00"}`,
		``, `null`, `[]`, `{}`, `{"status":1}`, `{"completion":{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := effects.ParseCompletion(data)
		if err != nil {
			if !errors.Is(err, effects.ErrMalformedCompletion) {
				t.Fatalf("error %q does not wrap ErrMalformedCompletion", err)
			}
			// The reason is logged and sent as a Term reason: it names
			// the field without echoing a large body.
			if len(err.Error()) > maxErrorText {
				t.Fatalf("error of %d bytes for a body of %d: %.200q", len(err.Error()), len(data), err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted, but Validate says %v", err)
		}
		if !effects.IsUUID(c.EffectID) || (c.Status != effects.StatusSucceeded && c.Status != effects.StatusFailed) ||
			c.Attempts < 0 || c.CompletedAt.IsZero() || (len(c.Completion) > 0 && !json.Valid(c.Completion)) {
			t.Fatalf("accepted an invalid completion %+v", c)
		}
		ref := effects.Ref{ID: c.EffectID, Kind: c.Kind, EventID: "e", Attempt: c.Attempts}
		msg, err := effects.CompletionMsg(ref, c)
		if err != nil {
			// encoding/json refuses a time outside years 0 to 9999, which
			// a completion from elsewhere may hold: it was parsed but
			// cannot be sent on. Anything else is a bug.
			if y := c.CompletedAt.Year(); y >= 0 && y <= 9999 {
				t.Fatalf("accepted completion %+v does not encode: %v", c, err)
			}
			return
		}
		if msg.Subject != effects.CompletedSubject(c.Kind) || msg.Header.Get(jetstream.MsgIDHeader) != effects.CompletionMsgID(ref, c.Status) {
			t.Fatalf("completion of %q published on %s with id %q", c.Kind, msg.Subject, msg.Header.Get(jetstream.MsgIDHeader))
		}
		back, err := effects.ParseCompletion(msg.Data)
		if err != nil {
			t.Fatalf("%s, encoded from an accepted completion, does not parse: %v", msg.Data, err)
		}
		if back.EffectID != c.EffectID || back.Kind != c.Kind || back.Status != c.Status || back.Attempts != c.Attempts ||
			!back.CompletedAt.Equal(c.CompletedAt) || !sameText(back.Error, c.Error) || !jsonEqual(back.Completion, c.Completion) {
			t.Fatalf("completion did not round-trip:\n%+v\n%+v", c, back)
		}
	})
}

func sameText(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// jsonEqual compares two JSON values ignoring insignificant white space; two
// absent values (nil, or null) are equal.
func jsonEqual(a, b []byte) bool {
	norm := func(v []byte) []byte {
		var buf bytes.Buffer
		if len(bytes.TrimSpace(v)) == 0 {
			return []byte("null")
		}
		if json.Compact(&buf, v) != nil {
			return nil
		}
		return buf.Bytes()
	}
	return bytes.Equal(norm(a), norm(b))
}

// maxErrorText bounds an error about outside input: it is logged, sent as a
// Term reason or written to a row, and must name what is wrong without
// echoing a large input.
const maxErrorText = 512

var (
	kindRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// FuzzKindAndID checks the two checks every decoder of outside input and the
// CLI (`effects show <id>`, `retry <id>`, `--kind`) make, against regular
// expressions of what they promise: a valid kind is a single subject token
// that is not "completed", so its subjects are on the right streams; an id
// is a UUID. Errors wrap ErrInvalidKind and stay short.
func FuzzKindAndID(f *testing.F) {
	for _, s := range []string{"echo", "send_email", "a-b", "completed", "", "a.b", "a*", ">", "a b", "é",
		strings.Repeat("k", 64), strings.Repeat("k", 65), "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11",
		"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c1g", "0d8a6f4e2b1c4c6e9a0f5f3d2e1b7c11", "{0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := effects.ValidateKind(s)
		want := kindRE.MatchString(s) && s != "completed"
		if (err == nil) != want {
			t.Fatalf("ValidateKind(%q) = %v, want valid=%t", s, err, want)
		}
		if err != nil {
			if !errors.Is(err, effects.ErrInvalidKind) || !utf8.ValidString(err.Error()) && utf8.ValidString(s) {
				t.Fatalf("ValidateKind(%q): error %q", s, err)
			}
			if len(err.Error()) > maxErrorText {
				t.Fatalf("ValidateKind of a %d-byte kind: %d-byte error", len(s), len(err.Error()))
			}
			if effects.CompletedSubject(s) != effects.InvalidKindSubject {
				t.Fatalf("CompletedSubject(%q) = %q, want %q", s, effects.CompletedSubject(s), effects.InvalidKindSubject)
			}
		} else {
			subj := effects.Subject(s)
			if strings.Count(subj, ".") != 1 || strings.ContainsAny(subj, "*> \t") ||
				effects.CompletedSubject(s) != effects.CompletedPrefix+s {
				t.Fatalf("kind %q has subjects %q and %q", s, subj, effects.CompletedSubject(s))
			}
		}
		if got, want := effects.IsUUID(s), uuidRE.MatchString(s); got != want {
			t.Fatalf("IsUUID(%q) = %t, want %t", s, got, want)
		}
	})
}
