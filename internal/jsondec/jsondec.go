// Package jsondec holds the pieces of the hand-written decoders of the wire
// formats (the ingest's Hasura body, the dispatcher's effect message, the
// completion): a validator several times faster than json.Valid and a walker
// over input it has accepted. Each decoder built on them takes only what it
// decodes exactly as encoding/json does and hands anything else over to
// encoding/json; a fuzz target per decoder holds the two to the same result.
package jsondec

import (
	"bytes"
	"unicode/utf16"
	"unicode/utf8"
)

// Decoder walks a JSON value that [Valid] accepted.
type Decoder struct {
	b      []byte
	failed bool
}

// New returns a Decoder of b, which [Valid] must have accepted.
func New(b []byte) Decoder { return Decoder{b: b} }

// Failed reports whether a walk met something it could not follow. Only a
// b that Valid did not accept can make it fail; a decoder then hands over.
func (d *Decoder) Failed() bool { return d.failed }

// Object walks the object at b[i] == '{', calling field with each key
// (without quotes) and the index of its value; field returns the index after
// the value. It returns the index after the object, and false when field
// does or a key is not plain ASCII (an escape or a byte past ASCII: then
// encoding/json's own matching and folding of keys applies).
func (d *Decoder) Object(i int, field func(key []byte, v int) (int, bool)) (int, bool) {
	b := d.b
	i = SkipSpace(b, i+1)
	if b[i] == '}' {
		return i + 1, true
	}
	for {
		end := SkipString(b, i)
		if end < 0 {
			return 0, false
		}
		key := b[i+1 : end-1]
		if !PlainASCII(key) {
			return 0, false
		}
		i = SkipSpace(b, SkipSpace(b, end)+1) // past ':'
		next, ok := field(key, i)
		if !ok || d.failed {
			return 0, false
		}
		if i = SkipSpace(b, next); i >= len(b) {
			return 0, false
		}
		if b[i] == '}' {
			return i + 1, true
		}
		i = SkipSpace(b, i+1) // past ','
	}
}

// Str decodes the plain string (see [Decoder.PlainString]) at b[i] into
// dst: null leaves dst as is, as encoding/json does; anything else fails.
func (d *Decoder) Str(i int, dst *string) (int, bool) {
	s, end, ok := d.PlainString(i)
	if !ok {
		if d.b[i] == 'n' {
			return i + len("null"), true
		}
		return 0, false
	}
	*dst = string(s)
	return end, true
}

// PlainString returns the contents of the string at b[i] when it has no
// escape and is valid UTF-8, so that its bytes are what encoding/json would
// decode.
func (d *Decoder) PlainString(i int) ([]byte, int, bool) {
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

// String decodes the string at b[i] as encoding/json does, escapes
// included, and returns it with the index after it. It fails (the caller
// hands over) on what encoding/json decodes by rules of its own: invalid
// UTF-8 and \u escapes of surrogates (which it pairs or replaces by U+FFFD).
// All that the wire formats' encoder (internal/jsonenc) writes decodes here.
func (d *Decoder) String(i int) (string, int, bool) {
	if s, end, ok := d.PlainString(i); ok {
		return string(s), end, true
	}
	b := d.b
	if b[i] != '"' {
		return "", 0, false
	}
	var buf [128]byte
	out := buf[:0]
	start := i + 1
	for j := start; j < len(b); {
		c := b[j]
		switch {
		case c == '"':
			seg := b[start:j]
			if !utf8.Valid(seg) {
				return "", 0, false
			}
			return string(append(out, seg...)), j + 1, true
		case c == '\\':
			seg := b[start:j]
			if !utf8.Valid(seg) {
				return "", 0, false
			}
			out = append(out, seg...)
			if j+1 >= len(b) {
				return "", 0, false
			}
			switch e := b[j+1]; e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := hex4(b, j+2)
				if !ok || utf16.IsSurrogate(r) {
					return "", 0, false
				}
				out = utf8.AppendRune(out, r)
				j += 4
			default:
				return "", 0, false
			}
			j += 2
			start = j
		default:
			j++
		}
	}
	return "", 0, false
}

// Fields tracks which of up to 64 fields a decoder has met. A second
// occurrence of a field is encoding/json's to resolve (the last wins, into
// what the first left): a decoder hands the input over.
type Fields uint64

// First reports whether field n is met for the first time, and marks it.
func (f *Fields) First(n int) bool {
	if *f&(1<<n) != 0 {
		return false
	}
	*f |= 1 << n
	return true
}

// StringTo decodes the string at b[i] into dst, as [Decoder.String] does:
// null leaves dst as is, as encoding/json does; anything else fails.
func (d *Decoder) StringTo(i int, dst *string) (int, bool) {
	s, end, ok := d.String(i)
	if !ok {
		if d.b[i] == 'n' {
			return i + len("null"), true
		}
		return 0, false
	}
	*dst = s
	return end, true
}

// StringMap decodes the object of strings at b[i] into a new map, as
// encoding/json decodes a map[string]string into a nil one: null leaves it
// nil, a null value is "", a later key replaces an earlier one. Keys and
// values decode as [Decoder.String] does; anything else fails.
func (d *Decoder) StringMap(i int, dst *map[string]string) (int, bool) {
	b := d.b
	switch b[i] {
	case 'n':
		return i + len("null"), true
	case '{':
	default:
		return 0, false
	}
	m := make(map[string]string)
	*dst = m
	i = SkipSpace(b, i+1)
	if b[i] == '}' {
		return i + 1, true
	}
	for {
		key, end, ok := d.String(i)
		if !ok {
			return 0, false
		}
		i = SkipSpace(b, SkipSpace(b, end)+1) // past ':'
		var val string
		if i, ok = d.StringTo(i, &val); !ok {
			return 0, false
		}
		m[key] = val
		if i = SkipSpace(b, i); i >= len(b) {
			return 0, false
		}
		if b[i] == '}' {
			return i + 1, true
		}
		i = SkipSpace(b, i+1) // past ','
	}
}

// hex4 reads the four hex digits at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	if len(b)-i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// Skip returns the index after the value at b[i].
func (d *Decoder) Skip(i int) int {
	b := d.b
	switch b[i] {
	case '"':
		if end := SkipString(b, i); end > 0 {
			return end
		}
		d.failed = true
		return len(b)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end := SkipString(b, j)
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

// AppendCompact appends src, which [Valid] accepted, to dst without the
// whitespace between tokens: what json.Compact writes for it, without its
// scanner's function call per byte.
func AppendCompact(dst, src []byte) []byte {
	start := 0
	for i := 0; i < len(src); i++ {
		switch src[i] {
		case '"':
			i = SkipString(src, i) - 1
		case ' ', '\t', '\n', '\r':
			dst = append(dst, src[start:i]...)
			start = i + 1
		}
	}
	return append(dst, src[start:]...)
}

// SkipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// SkipString returns the index after the JSON string starting at i, or -1 if
// there is none. The input is valid JSON, so only escapes need care.
func SkipString(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// PlainASCII reports whether a key has no escape and no byte past ASCII.
func PlainASCII(b []byte) bool {
	for _, c := range b {
		if c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// FoldsTo reports whether key equals one of names ignoring ASCII case:
// encoding/json would decode it into that field. A decoder that matched the
// exact names first hands such a key over (which of two fields wins is
// encoding/json's to say).
func FoldsTo(key []byte, names ...string) bool {
	for _, n := range names {
		if len(key) == len(n) && bytes.EqualFold(key, []byte(n)) {
			return true
		}
	}
	return false
}

// MaxDepth bounds the nesting Valid follows; deeper input goes to
// encoding/json (whose own limit is 10,000).
const MaxDepth = 512

// Valid reports whether b is one JSON value with only whitespace around
// it, as json.Valid does but several times faster: json.Valid's scanner calls
// a function per byte. Like json.Valid it does not check UTF-8 in strings.
// It may refuse what json.Valid accepts (nesting past MaxDepth), never
// the other way round: the caller then decodes with encoding/json.
func Valid(b []byte) bool {
	v := validator{b: b}
	i, ok := v.value(SkipSpace(b, 0), 0)
	return ok && SkipSpace(b, i) == len(b)
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
		if depth >= MaxDepth {
			return 0, false
		}
		i = SkipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = v.str(i); !ok {
				return 0, false
			}
			if i = SkipSpace(b, i); i >= len(b) || b[i] != ':' {
				return 0, false
			}
			if i, ok = v.value(SkipSpace(b, i+1), depth+1); !ok {
				return 0, false
			}
			if i = SkipSpace(b, i); i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case '}':
				return i + 1, true
			case ',':
				i = SkipSpace(b, i+1)
			default:
				return 0, false
			}
		}
	case c == '[':
		if depth >= MaxDepth {
			return 0, false
		}
		i = SkipSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = v.value(i, depth+1); !ok {
				return 0, false
			}
			if i = SkipSpace(b, i); i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ']':
				return i + 1, true
			case ',':
				i = SkipSpace(b, i+1)
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
