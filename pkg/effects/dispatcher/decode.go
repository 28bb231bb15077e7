package dispatcher

import (
	"bytes"

	"github.com/effects-run/effects/internal/jsondec"
	"github.com/effects-run/effects/pkg/effects"
)

// decodeEffectFast decodes data, which jsondec.Valid accepted, into e the
// way json.Unmarshal would, without reflection. It reports false, leaving e
// in any state, as soon as it meets anything it does not decode exactly as
// encoding/json does: a field of the wrong type, a duplicate field, a key
// that differs from a field's name only in case, a string with invalid UTF-8
// or a surrogate escape, a created_at time.Time refuses. The caller then
// decodes with encoding/json, which also words the error.
// FuzzDecodeEffectFast holds the two to the same result.
//
// A body whose kind is kind gets kind itself (no allocation): decodeEffect
// sets the subject's kind anyway. The payload is a copy, as a
// json.RawMessage's is: the effect outlives the message.
//
// encoding/json was 18% of the dispatcher's CPU; every message the ingest,
// the table source and the reconciler publish (internal/ingest's
// appendEffect) takes this path.
func decodeEffectFast(data []byte, kind string, e *effects.Effect) bool {
	i := jsondec.SkipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return false // null, or a type error encoding/json words
	}
	d := jsondec.New(data)
	var seen jsondec.Fields // id, kind, payload, created_at, session_variables, run_at
	_, ok := d.Object(i, func(key []byte, v int) (int, bool) {
		switch {
		case string(key) == "id":
			if !seen.First(0) {
				return 0, false
			}
			return d.StringTo(v, &e.ID)
		case string(key) == "kind":
			if !seen.First(1) {
				return 0, false
			}
			if s, end, ok := d.PlainString(v); ok && string(s) == kind {
				e.Kind = kind
				return end, true
			}
			return d.StringTo(v, &e.Kind)
		case string(key) == "payload":
			if !seen.First(2) {
				return 0, false
			}
			end := d.Skip(v)
			e.Payload = bytes.Clone(data[v:end]) // null too: json.RawMessage keeps it
			return end, true
		case string(key) == "created_at":
			if !seen.First(3) {
				return 0, false
			}
			end := d.Skip(v)
			// What encoding/json does for a time.Time, null included.
			return end, e.CreatedAt.UnmarshalJSON(data[v:end]) == nil
		case string(key) == "session_variables":
			if !seen.First(4) {
				return 0, false
			}
			return d.StringMap(v, &e.SessionVariables)
		case string(key) == "run_at":
			if !seen.First(5) {
				return 0, false
			}
			end := d.Skip(v)
			return end, e.RunAt.UnmarshalJSON(data[v:end]) == nil
		case jsondec.FoldsTo(key, "id", "kind", "payload", "created_at", "session_variables", "run_at"):
			return 0, false
		}
		return d.Skip(v), true
	})
	return ok && !d.Failed()
}
