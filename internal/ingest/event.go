package ingest

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/effects-run/effects/internal/jsondec"
	"github.com/effects-run/effects/pkg/effects"
)

// Hasura event-trigger operations.
const (
	opInsert = "INSERT"
	opUpdate = "UPDATE"
	opDelete = "DELETE"
	opManual = "MANUAL"
)

// maxEventIDLength bounds the Hasura event id, which becomes the Nats-Msg-Id
// header and part of a completion's message id. Hasura sends a UUID (36).
const maxEventIDLength = 128

// hasuraEvent is the part of a Hasura event-trigger body the ingest reads.
// Everything else (trigger, table, delivery_info, the row's other columns)
// is skipped by the decoder without being stored.
type hasuraEvent struct {
	// ID is the event id: the same on every redelivery of one event, new
	// for a MANUAL invocation.
	ID string `json:"id"`
	// CreatedAt is when the event was created; used only when the row has
	// no created_at.
	CreatedAt string     `json:"created_at"`
	Event     *eventBody `json:"event"`
}

type eventBody struct {
	Op string `json:"op"`
	// SessionVariables is kept as received: an object or null.
	SessionVariables json.RawMessage `json:"session_variables"`
	TraceContext     traceContext    `json:"trace_context"`
	Data             struct {
		Old *eventRow `json:"old"`
		New *eventRow `json:"new"`
	} `json:"data"`
}

// eventRow is a row of the effects table as Hasura sends it (row_to_json).
type eventRow struct {
	ID string `json:"id"`
	// Kind is a pointer to tell a missing column (a trigger configured
	// without it: 400) from an empty kind (a row that can never succeed).
	Kind *string `json:"kind"`
	// Payload is the jsonb column, byte for byte as Hasura sent it.
	Payload   json.RawMessage `json:"payload"`
	CreatedAt string          `json:"created_at"`
	// RunAt is the row's run_at (migration 008): empty when NULL or when
	// the trigger does not send the column.
	RunAt string `json:"run_at"`
}

// traceContext turns event.trace_context into a W3C traceparent value. It
// never fails decoding: a trace context is a courtesy, and a malformed one
// must not turn an effect away.
type traceContext struct {
	parent string
}

func (tc *traceContext) UnmarshalJSON(data []byte) error {
	if len(data) == 0 || data[0] != '{' {
		return nil
	}
	var raw struct {
		TraceID       json.RawMessage `json:"trace_id"`
		SpanID        json.RawMessage `json:"span_id"`
		SamplingState json.RawMessage `json:"sampling_state"`
	}
	if json.Unmarshal(data, &raw) != nil {
		return nil
	}
	tc.parent = traceparent(raw.TraceID, raw.SpanID, raw.SamplingState)
	return nil
}

// traceparent builds "00-<trace_id>-<span_id>-<flags>" from the raw JSON of
// the trace context's fields, or returns "" when they are not a valid
// 32-hex trace id and 16-hex span id. Hasura's sampling_state "1" means
// sampled (flags 01); anything else is 00.
func traceparent(traceID, spanID, sampling json.RawMessage) string {
	tid, ok1 := quotedHex(traceID, 32)
	sid, ok2 := quotedHex(spanID, 16)
	if !ok1 || !ok2 {
		return ""
	}
	flags := "00"
	if s := string(sampling); s == `"1"` || s == "1" {
		flags = "01"
	}
	b := make([]byte, 0, 55)
	b = append(b, "00-"...)
	b = appendLowerHex(b, tid)
	b = append(b, '-')
	b = appendLowerHex(b, sid)
	b = append(b, '-')
	b = append(b, flags...)
	return string(b)
}

// quotedHex returns the n hex digits inside a JSON string literal. W3C forbids
// an all-zero id, so that is refused too.
func quotedHex(raw json.RawMessage, n int) ([]byte, bool) {
	if len(raw) != n+2 || raw[0] != '"' || raw[n+1] != '"' {
		return nil, false
	}
	hex := raw[1 : n+1]
	nonZero := false
	for _, c := range hex {
		switch {
		case c == '0':
		case '1' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
			nonZero = true
		default:
			return nil, false
		}
	}
	return hex, nonZero
}

func appendLowerHex(b, hex []byte) []byte {
	for _, c := range hex {
		if 'A' <= c && c <= 'F' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}

// badRequest is why a body is not a Hasura event the ingest can use. Its text
// goes to Hasura's event log as the 400 reply, so it names the field.
type badRequest string

func (e badRequest) Error() string { return string(e) }

// decodeEvent decodes body once into the fields the ingest reads: by
// decodeEventFast when it can, by encoding/json otherwise (and for the
// error's words).
func decodeEvent(body []byte, ev *hasuraEvent) error {
	if jsondec.Valid(body) && decodeEventFast(body, ev) {
		return nil
	}
	*ev = hasuraEvent{}
	err := json.Unmarshal(body, ev)
	if err == nil {
		return nil
	}
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return badRequest(fmt.Sprintf("the body must be a JSON object (a Hasura event), not %s", article(typeErr.Value)))
		}
		return badRequest(fmt.Sprintf("%s must be %s, not %s", typeErr.Field, jsonKind(typeErr.Type), article(typeErr.Value)))
	}
	var syntaxErr *json.SyntaxError
	if errors.As(err, &syntaxErr) {
		return badRequest(fmt.Sprintf("the body is not JSON: %v (at byte %d)", syntaxErr, syntaxErr.Offset))
	}
	// An empty or truncated body.
	return badRequest("the body is not JSON: " + err.Error())
}

// jsonKind names the JSON type that decodes into t.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Bool:
		return "a boolean"
	}
	return "a number"
}

func article(jsonValue string) string {
	switch jsonValue {
	case "array", "object":
		return "an " + jsonValue
	case "string", "number":
		return "a " + jsonValue
	case "bool":
		return "a boolean"
	}
	return jsonValue
}

// checkEvent checks what every event needs: an event id and an operation.
func (ev *hasuraEvent) checkEvent() error {
	switch {
	case ev.ID == "":
		return badRequest("id (the Hasura event id) is missing")
	case len(ev.ID) > maxEventIDLength:
		return badRequest(fmt.Sprintf("id (the Hasura event id) is %d bytes long, the limit is %d", len(ev.ID), maxEventIDLength))
	case !visibleASCII(ev.ID):
		return badRequest(fmt.Sprintf("id (the Hasura event id) %q may only contain visible ASCII characters", ev.ID))
	case ev.Event == nil:
		return badRequest("event is missing")
	}
	switch ev.Event.Op {
	case opInsert, opManual, opUpdate, opDelete:
		return nil
	case "":
		return badRequest("event.op is missing")
	}
	return badRequest(fmt.Sprintf("event.op %s is not INSERT, UPDATE, DELETE or MANUAL", quoteShort(ev.Event.Op)))
}

// checkRow checks the row of an INSERT or MANUAL event and returns it with
// its created_at. A row that passes has a UUID id and a kind; whether that
// kind and payload can ever succeed is decided later, since such a row gets
// a failed completion rather than a 400.
func (ev *hasuraEvent) checkRow(now func() time.Time) (*eventRow, time.Time, error) {
	row := ev.Event.Data.New
	switch {
	case row == nil:
		return nil, time.Time{}, badRequest(fmt.Sprintf("event.data.new is missing: %s events carry the row there", ev.Event.Op))
	case row.ID == "":
		return nil, time.Time{}, badRequest("event.data.new.id is missing")
	case !effects.IsUUID(row.ID):
		return nil, time.Time{}, badRequest(fmt.Sprintf("event.data.new.id %s is not a UUID", quoteShort(row.ID)))
	case row.Kind == nil:
		return nil, time.Time{}, badRequest("event.data.new.kind is missing")
	}
	if sv := ev.Event.SessionVariables; !isStringObjectOrNull(sv) {
		return nil, time.Time{}, badRequest("event.session_variables must be an object of strings or null")
	}
	var createdAt time.Time
	switch {
	case row.CreatedAt != "":
		t, ok := parseTimestamp(row.CreatedAt)
		if !ok && unrepresentableTimestamp(row.CreatedAt) {
			// PostgreSQL wrote this value (row_to_json), so the row exists
			// and holds it: 'infinity', '-infinity', a year past 9999 or
			// BC. A 400 would only make Hasura retry and give up, leaving
			// the row pending; the caller fails the row instead.
			return row, time.Time{}, &unusableCreatedAt{value: row.CreatedAt}
		}
		if !ok {
			return nil, time.Time{}, badRequest(fmt.Sprintf("event.data.new.created_at %s is not a timestamp", quoteShort(row.CreatedAt)))
		}
		createdAt = t
	case ev.CreatedAt != "":
		// A trigger configured without the created_at column: the event
		// was created in the same transaction as the row, close enough.
		t, ok := parseTimestamp(ev.CreatedAt)
		if !ok {
			return nil, time.Time{}, badRequest(fmt.Sprintf("created_at %s is not a timestamp", quoteShort(ev.CreatedAt)))
		}
		createdAt = t
	default:
		createdAt = now()
	}
	return row, createdAt.UTC(), nil
}

// unusableCreatedAt is checkRow's error for a row whose created_at is
// not a time an effect message can carry. The row is well formed otherwise,
// so it is failed with the reason rather than answered with a 400.
type unusableCreatedAt struct{ value string }

func (e *unusableCreatedAt) Error() string {
	return "created_at " + quoteShort(e.value) + " cannot be carried by an effect message (years 0 to 9999 only)"
}

// unrepresentableTimestamp reports whether s is one of the forms in which
// PostgreSQL writes a timestamp that RFC 3339 cannot hold: 'infinity',
// '-infinity', a BC date ("0044-03-15T00:00:00+00:00 BC") or a year of
// five or more digits ("10000-01-01T00:00:00+00:00").
func unrepresentableTimestamp(s string) bool {
	if s == "infinity" || s == "-infinity" || strings.HasSuffix(s, " BC") {
		return true
	}
	digits := 0
	for digits < len(s) && s[digits] >= '0' && s[digits] <= '9' {
		digits++
	}
	return digits >= 5 && digits < len(s) && s[digits] == '-'
}

// ignoredKind is the kind label of an ignored UPDATE or DELETE.
func (ev *hasuraEvent) ignoredKind() string {
	for _, row := range []*eventRow{ev.Event.Data.New, ev.Event.Data.Old} {
		if row != nil && row.Kind != nil {
			return kindLabel(*row.Kind)
		}
	}
	return invalidKindLabel
}

// parseTimestamp reads the timestamps Hasura sends: the row's timestamptz as
// row_to_json renders it ("2026-03-14T09:26:53.589793+00:00", offsets also as
// "+00" or "+0000", a space instead of "T" from text casts), the v1 event
// created_at ("...Z") and the v2 one without a zone ("2026-03-14T09:26:53.589793",
// which Hasura writes in UTC).
func parseTimestamp(s string) (time.Time, bool) {
	if len(s) > 10 && s[10] == ' ' {
		s = s[:10] + "T" + s[11:]
	}
	// The common case first: RFC 3339 has a fast path in package time.
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, true
	}
	if !hasZone(s) {
		t, err := time.Parse("2006-01-02T15:04:05", s) // fractional seconds are accepted too
		return t, err == nil
	}
	for _, layout := range [...]string{"2006-01-02T15:04:05Z07", "2006-01-02T15:04:05Z0700"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// hasZone reports whether a timestamp ends in a zone: Z or an offset after
// the time of day.
func hasZone(s string) bool {
	if len(s) <= 19 {
		return false
	}
	return strings.ContainsAny(s[19:], "Zz+-")
}

// isStringObjectOrNull reports whether raw, known to be valid JSON, is null or
// an object whose values are all strings: what effects.Effect's
// session_variables decodes into. Checking here keeps a message every
// consumer can decode; it walks the bytes instead of decoding into a map, as
// it runs on every request.
func isStringObjectOrNull(raw []byte) bool {
	if len(raw) == 0 || string(raw) == "null" {
		return true
	}
	i := jsondec.SkipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return false
	}
	i = jsondec.SkipSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return true
	}
	for {
		// A key, then ':'.
		if i = jsondec.SkipString(raw, i); i < 0 {
			return false
		}
		if i = jsondec.SkipSpace(raw, i); i >= len(raw) || raw[i] != ':' {
			return false
		}
		// A value, which must be a string.
		if i = jsondec.SkipString(raw, jsondec.SkipSpace(raw, i+1)); i < 0 {
			return false
		}
		i = jsondec.SkipSpace(raw, i)
		switch {
		case i >= len(raw):
			return false
		case raw[i] == '}':
			return true
		case raw[i] != ',':
			return false
		}
		i = jsondec.SkipSpace(raw, i+1)
	}
}

func visibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// quoteShort quotes a value for an error message, cut to a readable length:
// a 4 MiB kind must not become a 4 MiB error.
func quoteShort(s string) string {
	const limit = 64
	if len(s) <= limit {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q… (%d bytes)", cutUTF8(s, limit), len(s))
}

// cutUTF8 cuts s to at most n bytes without splitting a character.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
