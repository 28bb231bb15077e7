package ingest

import (
	"bytes"

	"github.com/effects-run/effects/internal/jsondec"
)

// decodeEventFast decodes body, which must be valid JSON (jsondec.Valid), into
// ev the way json.Unmarshal would, walking the bytes once and keeping only
// the fields the ingest reads. It reports false, leaving ev in any state,
// as soon as it meets anything it does not decode exactly as encoding/json
// does: a field of the wrong type, a duplicate field, a key that differs from
// a field's name only in case, a key or a kept string with an escape or
// invalid UTF-8. The caller then decodes with encoding/json, which also words
// the error. FuzzDecodeEventFast holds the two to the same result.
//
// encoding/json was 40% of the handler's CPU (reflection, a second pass to
// validate, a map lookup per key); Hasura's bodies are plain enough that this
// path takes nearly all of them.
func decodeEventFast(body []byte, ev *hasuraEvent) bool {
	d := newFastDecoder(body)
	i := jsondec.SkipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return false // null, or a type error encoding/json words
	}
	var seen [3]bool // id, created_at, event
	_, ok := d.Object(i, func(key []byte, v int) (int, bool) {
		switch {
		case string(key) == "id":
			if seen[0] {
				return 0, false
			}
			seen[0] = true
			return d.Str(v, &ev.ID)
		case string(key) == "created_at":
			if seen[1] {
				return 0, false
			}
			seen[1] = true
			return d.Str(v, &ev.CreatedAt)
		case string(key) == "event":
			if seen[2] {
				return 0, false
			}
			seen[2] = true
			if body[v] == 'n' {
				return v + len("null"), true // stays nil
			}
			ev.Event = new(eventBody)
			return d.eventBody(v, ev.Event)
		case jsondec.FoldsTo(key, "id", "created_at", "event"):
			return 0, false
		}
		return d.Skip(v), true
	})
	return ok && !d.Failed()
}

// fastDecoder is jsondec's walker with the ingest's decoders of the body's
// parts.
type fastDecoder struct {
	jsondec.Decoder
	b []byte
}

func newFastDecoder(b []byte) fastDecoder { return fastDecoder{Decoder: jsondec.New(b), b: b} }

func (d *fastDecoder) eventBody(i int, eb *eventBody) (int, bool) {
	if d.b[i] != '{' {
		return 0, false
	}
	var seen [4]bool // op, session_variables, trace_context, data
	return d.Object(i, func(key []byte, v int) (int, bool) {
		switch {
		case string(key) == "op":
			if seen[0] {
				return 0, false
			}
			seen[0] = true
			return d.op(v, &eb.Op)
		case string(key) == "session_variables":
			if seen[1] {
				return 0, false
			}
			seen[1] = true
			end := d.Skip(v)
			eb.SessionVariables = bytes.Clone(d.b[v:end])
			return end, true
		case string(key) == "trace_context":
			if seen[2] {
				return 0, false
			}
			seen[2] = true
			end := d.Skip(v)
			if raw := d.b[v:end]; !fastTraceContext(raw, &eb.TraceContext) {
				_ = eb.TraceContext.UnmarshalJSON(raw) // never fails
			}
			return end, true
		case string(key) == "data":
			if seen[3] {
				return 0, false
			}
			seen[3] = true
			if d.b[v] == 'n' {
				return v + len("null"), true // a struct: null leaves it as is
			}
			return d.data(v, eb)
		case jsondec.FoldsTo(key, "op", "session_variables", "trace_context", "data"):
			return 0, false
		}
		return d.Skip(v), true
	})
}

func (d *fastDecoder) data(i int, eb *eventBody) (int, bool) {
	if d.b[i] != '{' {
		return 0, false
	}
	var seen [2]bool // old, new
	return d.Object(i, func(key []byte, v int) (int, bool) {
		switch {
		case string(key) == "old":
			if seen[0] {
				return 0, false
			}
			seen[0] = true
			return d.row(v, &eb.Data.Old)
		case string(key) == "new":
			if seen[1] {
				return 0, false
			}
			seen[1] = true
			return d.row(v, &eb.Data.New)
		case jsondec.FoldsTo(key, "old", "new"):
			return 0, false
		}
		return d.Skip(v), true
	})
}

func (d *fastDecoder) row(i int, dst **eventRow) (int, bool) {
	b := d.b
	if b[i] == 'n' {
		return i + len("null"), true // stays nil
	}
	if b[i] != '{' {
		return 0, false
	}
	r := new(eventRow)
	*dst = r
	var seen [5]bool // id, kind, payload, created_at, run_at
	return d.Object(i, func(key []byte, v int) (int, bool) {
		switch {
		case string(key) == "id":
			if seen[0] {
				return 0, false
			}
			seen[0] = true
			return d.Str(v, &r.ID)
		case string(key) == "kind":
			if seen[1] {
				return 0, false
			}
			seen[1] = true
			if b[v] == 'n' {
				return v + len("null"), true // stays nil
			}
			r.Kind = new(string)
			return d.Str(v, r.Kind)
		case string(key) == "payload":
			if seen[2] {
				return 0, false
			}
			seen[2] = true
			end := d.Skip(v)
			r.Payload = bytes.Clone(b[v:end])
			return end, true
		case string(key) == "created_at":
			if seen[3] {
				return 0, false
			}
			seen[3] = true
			return d.Str(v, &r.CreatedAt)
		case string(key) == "run_at":
			if seen[4] {
				return 0, false
			}
			seen[4] = true
			return d.Str(v, &r.RunAt)
		case jsondec.FoldsTo(key, "id", "kind", "payload", "created_at", "run_at"):
			return 0, false
		}
		return d.Skip(v), true
	})
}

// fastTraceContext is traceContext.UnmarshalJSON for raw, valid JSON,
// without reflection; false hands raw over to it (a duplicate or a key in
// another case).
func fastTraceContext(raw []byte, tc *traceContext) bool {
	if raw[0] != '{' {
		return true // not an object: no trace, as UnmarshalJSON decides
	}
	d := newFastDecoder(raw)
	var fields [3][]byte // trace_id, span_id, sampling_state
	names := [3]string{"trace_id", "span_id", "sampling_state"}
	_, ok := d.Object(0, func(key []byte, v int) (int, bool) {
		for n, name := range names {
			if string(key) == name {
				if fields[n] != nil {
					return 0, false
				}
				end := d.Skip(v)
				fields[n] = raw[v:end]
				return end, true
			}
		}
		if jsondec.FoldsTo(key, names[:]...) {
			return 0, false
		}
		return d.Skip(v), true
	})
	if !ok || d.Failed() {
		return false
	}
	tc.parent = traceparent(fields[0], fields[1], fields[2])
	return true
}

// op is str for event.op, without allocating for the four operations.
func (d *fastDecoder) op(i int, dst *string) (int, bool) {
	s, end, ok := d.PlainString(i)
	if !ok {
		return d.Str(i, dst)
	}
	switch string(s) {
	case opInsert:
		*dst = opInsert
	case opUpdate:
		*dst = opUpdate
	case opDelete:
		*dst = opDelete
	case opManual:
		*dst = opManual
	default:
		*dst = string(s)
	}
	return end, true
}
