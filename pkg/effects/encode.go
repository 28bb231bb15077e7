package effects

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// encodeCompletion writes c exactly as EncodeJSON(c) does (a test checks
// it byte for byte), without reflection: every completion a dispatcher
// publishes goes through it.
func encodeCompletion(c Completion) ([]byte, error) {
	if y := c.CompletedAt.Year(); y < 0 || y > 9999 {
		return EncodeJSON(c) // its error, word for word
	}
	if _, off := c.CompletedAt.Zone(); off%60 != 0 {
		return EncodeJSON(c)
	}
	n := len(`{"effect_id":"","kind":"","status":"","completion":,"error":,"attempts":,"completed_at":"2006-01-02T15:04:05.999999999-07:00"}`) +
		len(c.EffectID) + len(c.Kind) + len(c.Status) + len(c.Completion) + 20
	if c.Error != nil {
		n += len(*c.Error) + 2
	}
	b := make([]byte, 0, n)
	b = append(b, `{"effect_id":`...)
	b = appendJSONString(b, c.EffectID)
	b = append(b, `,"kind":`...)
	b = appendJSONString(b, c.Kind)
	b = append(b, `,"status":`...)
	b = appendJSONString(b, string(c.Status))
	b = append(b, `,"completion":`...)
	if c.Completion == nil {
		b = append(b, "null"...)
	} else {
		// As encoding/json writes a json.RawMessage with HTML escaping
		// off: compacted, refused when not valid JSON.
		buf := bytes.NewBuffer(b)
		if err := json.Compact(buf, c.Completion); err != nil {
			return EncodeJSON(c)
		}
		b = buf.Bytes()
	}
	b = append(b, `,"error":`...)
	if c.Error == nil {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, *c.Error)
	}
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(c.Attempts), 10)
	b = append(b, `,"completed_at":"`...)
	b = c.CompletedAt.AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...), nil
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string, escaped the way encoding/json
// escapes it with HTML escaping off: quote, backslash and control characters
// escaped, invalid UTF-8 replaced by U+FFFD, U+2028 and U+2029 escaped.
// (The ingest has the same function for the effect message.)
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
