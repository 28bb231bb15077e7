package ingest

import (
	"strconv"
	"time"

	"github.com/effects-run/effects/internal/jsonenc"
)

// appendEffect appends the JSON of an effects.Effect message:
//
//	{"id","kind","payload","created_at","session_variables"[,"run_at"]}
//
// It is built by hand rather than with json.Marshal so that the payload and
// session variables go out byte for byte as Hasura sent them: json.Marshal
// would compact a json.RawMessage and HTML-escape "<", ">" and "&" inside it.
// payload and sessionVars must be valid JSON (they come from a decoded body);
// created_at is written like encoding/json writes a time.Time, in UTC, and
// so is run_at, which is left out when zero (a row without a time).
func appendEffect(b []byte, id, kind string, payload []byte, createdAt time.Time, sessionVars []byte, runAt time.Time) []byte {
	b = append(b, `{"id":`...)
	b = jsonenc.AppendString(b, id)
	b = append(b, `,"kind":`...)
	b = jsonenc.AppendString(b, kind)
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
	if !runAt.IsZero() {
		b = append(b, `,"run_at":"`...)
		b = runAt.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	return append(b, '}')
}

// effectSize is the capacity appendEffect needs, so that it allocates once.
func effectSize(id, kind string, payload, sessionVars []byte) int {
	const fixed = len(`{"id":"","kind":"","payload":,"created_at":"2006-01-02T15:04:05.999999999Z","session_variables":null,"run_at":"2006-01-02T15:04:05.999999999Z"}`)
	return fixed + len(id) + len(kind) + len(payload) + len(sessionVars)
}

// The replies, built like the message: a handful of fields, no reflection.

func appendPublishedReply(b []byte, effectID, eventID string, duplicate bool, sequence uint64) []byte {
	b = append(b, `{"effect_id":`...)
	b = jsonenc.AppendString(b, effectID)
	b = append(b, `,"event_id":`...)
	b = jsonenc.AppendString(b, eventID)
	b = append(b, `,"duplicate":`...)
	b = strconv.AppendBool(b, duplicate)
	b = append(b, `,"sequence":`...)
	b = strconv.AppendUint(b, sequence, 10)
	return append(b, "}\n"...)
}

func appendRejectedReply(b []byte, effectID, eventID, reason string) []byte {
	b = append(b, `{"effect_id":`...)
	b = jsonenc.AppendString(b, effectID)
	b = append(b, `,"event_id":`...)
	b = jsonenc.AppendString(b, eventID)
	b = append(b, `,"rejected":`...)
	b = jsonenc.AppendString(b, reason)
	return append(b, "}\n"...)
}

func appendScheduledReply(b []byte, effectID, eventID string, runAt time.Time) []byte {
	b = append(b, `{"effect_id":`...)
	b = jsonenc.AppendString(b, effectID)
	b = append(b, `,"event_id":`...)
	b = jsonenc.AppendString(b, eventID)
	b = append(b, `,"scheduled":true,"run_at":`...)
	if runAt.IsZero() {
		b = append(b, "null"...) // a run_at no time can hold: never due
	} else {
		b = append(b, '"')
		b = runAt.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	return append(b, "}\n"...)
}

func appendIgnoredReply(b []byte, op string) []byte {
	b = append(b, `{"ignored":true,"op":`...)
	b = jsonenc.AppendString(b, op)
	return append(b, "}\n"...)
}

func appendErrorReply(b []byte, msg string) []byte {
	b = append(b, `{"error":`...)
	b = jsonenc.AppendString(b, msg)
	return append(b, "}\n"...)
}
