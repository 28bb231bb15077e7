package ingest

import (
	"bytes"
	"unicode/utf8"
)

// decodeEventFast decodes body, which must be valid JSON (validJSON), into
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
	d := fastDecoder{b: body}
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return false // null, or a type error encoding/json words
	}
	var seen [3]bool // id, created_at, event
	_, ok := d.object(i, func(key []byte, v int) (int, bool) {
		switch {
		case string(key) == "id":
			if seen[0] {
				return 0, false
			}
			seen[0] = true
			return d.str(v, &ev.ID)
		case string(key) == "created_at":
			if seen[1] {
				return 0, false
			}
			seen[1] = true
			return d.str(v, &ev.CreatedAt)
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
		case foldsTo(key, "id", "created_at", "event"):
			return 0, false
		}
		return d.skip(v), true
	})
	return ok && !d.failed
}

type fastDecoder struct {
	b      []byte
	failed bool
}

// object walks the object at b[i] == '{', calling field with each key
// (without quotes) and the index of its value; field returns the index after
// the value. It returns the index after the object, and false when field
// does or a key is not plain.
func (d *fastDecoder) object(i int, field func(key []byte, v int) (int, bool)) (int, bool) {
	b := d.b
	i = skipSpace(b, i+1)
	if b[i] == '}' {
		return i + 1, true
	}
	for {
		end := skipString(b, i)
		if end < 0 {
			return 0, false
		}
		key := b[i+1 : end-1]
		if !plainASCII(key) {
			return 0, false // an escape or non-ASCII: encoding/json's folding applies
		}
		i = skipSpace(b, skipSpace(b, end)+1) // past ':'
		next, ok := field(key, i)
		if !ok || d.failed {
			return 0, false
		}
		if i = skipSpace(b, next); i >= len(b) {
			return 0, false
		}
		if b[i] == '}' {
			return i + 1, true
		}
		i = skipSpace(b, i+1) // past ','
	}
}

func (d *fastDecoder) eventBody(i int, eb *eventBody) (int, bool) {
	if d.b[i] != '{' {
		return 0, false
	}
	var seen [4]bool // op, session_variables, trace_context, data
	return d.object(i, func(key []byte, v int) (int, bool) {
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
			end := d.skip(v)
			eb.SessionVariables = bytes.Clone(d.b[v:end])
			return end, true
		case string(key) == "trace_context":
			if seen[2] {
				return 0, false
			}
			seen[2] = true
			end := d.skip(v)
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
		case foldsTo(key, "op", "session_variables", "trace_context", "data"):
			return 0, false
		}
		return d.skip(v), true
	})
}

func (d *fastDecoder) data(i int, eb *eventBody) (int, bool) {
	if d.b[i] != '{' {
		return 0, false
	}
	var seen [2]bool // old, new
	return d.object(i, func(key []byte, v int) (int, bool) {
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
		case foldsTo(key, "old", "new"):
			return 0, false
		}
		return d.skip(v), true
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
	var seen [4]bool // id, kind, payload, created_at
	return d.object(i, func(key []byte, v int) (int, bool) {
		switch {
		case string(key) == "id":
			if seen[0] {
				return 0, false
			}
			seen[0] = true
			return d.str(v, &r.ID)
		case string(key) == "kind":
			if seen[1] {
				return 0, false
			}
			seen[1] = true
			if b[v] == 'n' {
				return v + len("null"), true // stays nil
			}
			r.Kind = new(string)
			return d.str(v, r.Kind)
		case string(key) == "payload":
			if seen[2] {
				return 0, false
			}
			seen[2] = true
			end := d.skip(v)
			r.Payload = bytes.Clone(b[v:end])
			return end, true
		case string(key) == "created_at":
			if seen[3] {
				return 0, false
			}
			seen[3] = true
			return d.str(v, &r.CreatedAt)
		case foldsTo(key, "id", "kind", "payload", "created_at"):
			return 0, false
		}
		return d.skip(v), true
	})
}

// fastTraceContext is traceContext.UnmarshalJSON for raw, valid JSON,
// without reflection; false hands raw over to it (a duplicate or a key in
// another case).
func fastTraceContext(raw []byte, tc *traceContext) bool {
	if raw[0] != '{' {
		return true // not an object: no trace, as UnmarshalJSON decides
	}
	d := fastDecoder{b: raw}
	var fields [3][]byte // trace_id, span_id, sampling_state
	names := [3]string{"trace_id", "span_id", "sampling_state"}
	_, ok := d.object(0, func(key []byte, v int) (int, bool) {
		for n, name := range names {
			if string(key) == name {
				if fields[n] != nil {
					return 0, false
				}
				end := d.skip(v)
				fields[n] = raw[v:end]
				return end, true
			}
		}
		if foldsTo(key, names[:]...) {
			return 0, false
		}
		return d.skip(v), true
	})
	if !ok || d.failed {
		return false
	}
	tc.parent = traceparent(fields[0], fields[1], fields[2])
	return true
}

// str decodes the string at b[i] into dst: null leaves dst as is, as
// encoding/json does; anything but a plain string fails.
func (d *fastDecoder) str(i int, dst *string) (int, bool) {
	s, end, ok := d.plainString(i)
	if !ok {
		if d.b[i] == 'n' {
			return i + len("null"), true
		}
		return 0, false
	}
	*dst = string(s)
	return end, true
}

// op is str for event.op, without allocating for the four operations.
func (d *fastDecoder) op(i int, dst *string) (int, bool) {
	s, end, ok := d.plainString(i)
	if !ok {
		return d.str(i, dst)
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

// plainString returns the contents of the string at b[i] when it has no
// escape and is valid UTF-8, so that its bytes are what encoding/json would
// decode.
func (d *fastDecoder) plainString(i int) ([]byte, int, bool) {
	b := d.b
	if b[i] != '"' {
		return nil, 0, false
	}
	ascii := true
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			s := b[i+1 : j]
			if !ascii && !utf8.Valid(s) {
				return nil, 0, false
			}
			return s, j + 1, true
		case c == '\\':
			return nil, 0, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, 0, false
}

// skip returns the index after the value at b[i]. b is valid JSON.
func (d *fastDecoder) skip(i int) int {
	b := d.b
	switch b[i] {
	case '"':
		if end := skipString(b, i); end > 0 {
			return end
		}
		d.failed = true
		return len(b)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end := skipString(b, j)
				if end < 0 {
					d.failed = true
					return len(b)
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		d.failed = true
		return len(b)
	}
	j := i
	for j < len(b) {
		switch b[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return j
		}
		j++
	}
	return j
}

// plainASCII reports whether a key has no escape and no byte past ASCII.
func plainASCII(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// foldsTo reports whether key equals one of names ignoring ASCII case:
// encoding/json would decode it into that field.
func foldsTo(key []byte, names ...string) bool {
	for _, n := range names {
		if len(key) == len(n) && bytes.EqualFold(key, []byte(n)) {
			return true
		}
	}
	return false
}

// maxFastDepth bounds the nesting validJSON follows; deeper bodies go to
// encoding/json (whose own limit is 10,000).
const maxFastDepth = 512

// validJSON reports whether b is one JSON value with only whitespace around
// it, as json.Valid does but several times faster: json.Valid's scanner calls
// a function per byte. Like json.Valid it does not check UTF-8 in strings.
// It may refuse what json.Valid accepts (nesting past maxFastDepth), never
// the other way round: the caller then decodes with encoding/json.
func validJSON(b []byte) bool {
	v := validator{b: b}
	i, ok := v.value(skipSpace(b, 0), 0)
	return ok && skipSpace(b, i) == len(b)
}

type validator struct{ b []byte }

func (v *validator) value(i, depth int) (int, bool) {
	b := v.b
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		return v.str(i)
	case c == '{':
		if depth >= maxFastDepth {
			return 0, false
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = v.str(i); !ok {
				return 0, false
			}
			if i = skipSpace(b, i); i >= len(b) || b[i] != ':' {
				return 0, false
			}
			if i, ok = v.value(skipSpace(b, i+1), depth+1); !ok {
				return 0, false
			}
			if i = skipSpace(b, i); i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case '}':
				return i + 1, true
			case ',':
				i = skipSpace(b, i+1)
			default:
				return 0, false
			}
		}
	case c == '[':
		if depth >= maxFastDepth {
			return 0, false
		}
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = v.value(i, depth+1); !ok {
				return 0, false
			}
			if i = skipSpace(b, i); i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ']':
				return i + 1, true
			case ',':
				i = skipSpace(b, i+1)
			default:
				return 0, false
			}
		}
	case c == 't':
		return v.literal(i, "true")
	case c == 'f':
		return v.literal(i, "false")
	case c == 'n':
		return v.literal(i, "null")
	case c == '-' || '0' <= c && c <= '9':
		return v.number(i)
	}
	return 0, false
}

func (v *validator) literal(i int, lit string) (int, bool) {
	if len(v.b)-i >= len(lit) && string(v.b[i:i+len(lit)]) == lit {
		return i + len(lit), true
	}
	return 0, false
}

// str checks the string at b[i]: no control characters, valid escapes.
func (v *validator) str(i int) (int, bool) {
	b := v.b
	if i >= len(b) || b[i] != '"' {
		return 0, false
	}
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return 0, false
		case c == '\\':
			if i++; i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-i <= 4 {
					return 0, false
				}
				for _, h := range b[i+1 : i+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return 0, false
					}
				}
				i += 4
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

// number checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at b[i].
func (v *validator) number(i int) (int, bool) {
	b := v.b
	digits := func(i int) (int, bool) {
		j := i
		for j < len(b) && '0' <= b[j] && b[j] <= '9' {
			j++
		}
		return j, j > i
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i, _ = digits(i)
	default:
		return 0, false
	}
	var ok bool
	if i < len(b) && b[i] == '.' {
		if i, ok = digits(i + 1); !ok {
			return 0, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i, ok = digits(i); !ok {
			return 0, false
		}
	}
	return i, true
}
