package ingest

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// appendEffect appends the JSON of an effects.Effect message:
//
//	{"id","kind","payload","created_at","session_variables"}
//
// It is built by hand rather than with json.Marshal so that the payload and
// session variables go out byte for byte as Hasura sent them: json.Marshal
// would compact a json.RawMessage and HTML-escape "<", ">" and "&" inside it.
// payload and sessionVars must be valid JSON (they come from a decoded body);
// created_at is written like encoding/json writes a time.Time, in UTC.
func appendEffect(b []byte, id, kind string, payload []byte, createdAt time.Time, sessionVars []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, id)
	b = append(b, `,"kind":`...)
	b = appendJSONString(b, kind)
	b = append(b, `,"payload":`...)
	b = append(b, payload...)
	b = append(b, `,"created_at":"`...)
	b = createdAt.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","session_variables":`...)
	if len(sessionVars) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, sessionVars...)
	}
	return append(b, '}')
}

// effectSize is the capacity appendEffect needs, so that it allocates once.
func effectSize(id, kind string, payload, sessionVars []byte) int {
	const fixed = len(`{"id":"","kind":"","payload":,"created_at":"2006-01-02T15:04:05.999999999Z","session_variables":null}`)
	return fixed + len(id) + len(kind) + len(payload) + len(sessionVars)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string, escaped the way encoding/json
// escapes it with HTML escaping off: quote, backslash and control characters
// escaped, invalid UTF-8 replaced by U+FFFD, U+2028 and U+2029 escaped (some
// JavaScript parsers take them for line ends). strconv.AppendQuote is not a
// substitute: its \x and \U escapes are not JSON.
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

// The replies, built like the message: a handful of fields, no reflection.

func appendPublishedReply(b []byte, effectID, eventID string, duplicate bool, sequence uint64) []byte {
	b = append(b, `{"effect_id":`...)
	b = appendJSONString(b, effectID)
	b = append(b, `,"event_id":`...)
	b = appendJSONString(b, eventID)
	b = append(b, `,"duplicate":`...)
	b = strconv.AppendBool(b, duplicate)
	b = append(b, `,"sequence":`...)
	b = strconv.AppendUint(b, sequence, 10)
	return append(b, "}\n"...)
}

func appendRejectedReply(b []byte, effectID, eventID, reason string) []byte {
	b = append(b, `{"effect_id":`...)
	b = appendJSONString(b, effectID)
	b = append(b, `,"event_id":`...)
	b = appendJSONString(b, eventID)
	b = append(b, `,"rejected":`...)
	b = appendJSONString(b, reason)
	return append(b, "}\n"...)
}

func appendIgnoredReply(b []byte, op string) []byte {
	b = append(b, `{"ignored":true,"op":`...)
	b = appendJSONString(b, op)
	return append(b, "}\n"...)
}

func appendErrorReply(b []byte, msg string) []byte {
	b = append(b, `{"error":`...)
	b = appendJSONString(b, msg)
	return append(b, "}\n"...)
}
