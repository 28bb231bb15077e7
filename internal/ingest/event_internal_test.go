package ingest

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestParseTimestamp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want string // RFC 3339 in UTC; "" for not a timestamp
	}{
		{"2026-03-14T09:26:53.589793", "2026-03-14T09:26:53.589793Z"},
		{"2026-03-14T09:26:53", "2026-03-14T09:26:53Z"},
		{"2020-01-23T13:20:26.916303Z", "2020-01-23T13:20:26.916303Z"},
		{"2026-03-14T09:26:53.589793+00:00", "2026-03-14T09:26:53.589793Z"},
		{"2026-03-14T09:26:53.589793+00", "2026-03-14T09:26:53.589793Z"},
		{"2026-03-14T09:26:53.589793-05", "2026-03-14T14:26:53.589793Z"},
		{"2026-03-14T09:26:53+0530", "2026-03-14T03:56:53Z"},
		{"2026-03-14T09:26:53.123456789+01:00", "2026-03-14T08:26:53.123456789Z"},
		{"2026-03-14 09:26:53.589793+00", "2026-03-14T09:26:53.589793Z"},
		{"2026-03-14 09:26:53.589793", "2026-03-14T09:26:53.589793Z"},
		{"", ""},
		{"yesterday", ""},
		{"2026-03-14", ""},
		{"2026-13-14T09:26:53", ""},
		{"2026-03-14T09:26:53+25:00", ""},
		{"2026-03-14T09:26:53 UTC", ""},
		{"infinity", ""},
	} {
		got, ok := parseTimestamp(tc.in)
		switch {
		case tc.want == "" && ok:
			t.Errorf("parseTimestamp(%q) = %s, want an error", tc.in, got)
		case tc.want != "" && !ok:
			t.Errorf("parseTimestamp(%q) failed, want %s", tc.in, tc.want)
		case ok && got.UTC().Format(time.RFC3339Nano) != tc.want:
			t.Errorf("parseTimestamp(%q) = %s, want %s", tc.in, got.UTC().Format(time.RFC3339Nano), tc.want)
		}
	}
}

func TestIsStringObjectOrNull(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{``, true},
		{`null`, true},
		{`{}`, true},
		{` { } `, true},
		{`{"x-hasura-role":"user"}`, true},
		{"{\n  \"a\": \"b\",\n  \"c\" : \"d\\\"}\"\n}", true},
		{`{"a":"\\"}`, true},
		{`{"a":1}`, false},
		{`{"a":"b","c":null}`, false},
		{`{"a":{"b":"c"}}`, false},
		{`{"a":["b"]}`, false},
		{`["a"]`, false},
		{`"a"`, false},
		{`true`, false},
	} {
		if got := isStringObjectOrNull([]byte(tc.in)); got != tc.want {
			t.Errorf("isStringObjectOrNull(%s) = %t, want %t", tc.in, got, tc.want)
		}
	}
}

// FuzzIsStringObjectOrNull checks the byte walk against decoding into what a
// consumer decodes session_variables into.
func FuzzIsStringObjectOrNull(f *testing.F) {
	for _, s := range []string{`null`, `{}`, `{"a":"b"}`, `{"a":1}`, `{"a":"b\"","c":"\\"}`, `[]`, ` {"a" : "b" , "c":"d"} `} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(s)) {
			return // the body as a whole was valid JSON, so raw always is
		}
		var m map[string]string
		want := json.Unmarshal([]byte(s), &m) == nil
		if got := isStringObjectOrNull([]byte(s)); got != want {
			t.Errorf("isStringObjectOrNull(%q) = %t, json.Unmarshal into map[string]string says %t", s, got, want)
		}
	})
}

func TestTraceparent(t *testing.T) {
	t.Parallel()
	const tid, sid = `"4bf92f3577b34da6a3ce929d0e0e4736"`, `"00f067aa0ba902b7"`
	for _, tc := range []struct {
		traceID, spanID, sampling, want string
	}{
		{tid, sid, `"1"`, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{tid, sid, `1`, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{tid, sid, `"0"`, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
		{tid, sid, ``, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
		{strings.ToUpper(tid), strings.ToUpper(sid), `"1"`, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{tid, `"0000000000000000"`, `"1"`, ""},
		{`"00000000000000000000000000000000"`, sid, `"1"`, ""},
		{tid[:len(tid)-2] + `"`, sid, `"1"`, ""},
		{tid, `"00f067aa0ba902bz"`, `"1"`, ""},
		{``, sid, `"1"`, ""},
		{`null`, `null`, `"1"`, ""},
	} {
		if got := traceparent(json.RawMessage(tc.traceID), json.RawMessage(tc.spanID), json.RawMessage(tc.sampling)); got != tc.want {
			t.Errorf("traceparent(%s, %s, %s) = %q, want %q", tc.traceID, tc.spanID, tc.sampling, got, tc.want)
		}
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{5 * time.Second, "5"},
		{1500 * time.Millisecond, "2"},
		{time.Millisecond, "1"},
		{time.Minute, "60"},
	} {
		if got := (Config{RetryAfter: tc.d}).retryAfterSeconds(); got != tc.want {
			t.Errorf("retryAfterSeconds(%s) = %s, want %s", tc.d, got, tc.want)
		}
	}
}

func TestAppendEffectMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	// With payload and session variables compact and free of HTML, the
	// hand-built message is exactly what json.Marshal makes of the struct.
	at := time.Date(2026, 3, 14, 9, 26, 53, 589793000, time.FixedZone("x", 3600))
	type effect struct {
		ID               string            `json:"id"`
		Kind             string            `json:"kind"`
		Payload          json.RawMessage   `json:"payload"`
		CreatedAt        time.Time         `json:"created_at"`
		SessionVariables map[string]string `json:"session_variables"`
		RunAt            time.Time         `json:"run_at,omitzero"`
	}
	for i, sv := range []string{`{"x-hasura-role":"user"}`, ``, `null`} {
		e := effect{ID: "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11", Kind: "k", Payload: json.RawMessage(`{"a":[1,"b"]}`), CreatedAt: at.UTC()}
		if sv != "" {
			_ = json.Unmarshal([]byte(sv), &e.SessionVariables)
		}
		if i == 2 {
			e.RunAt = at.Add(36 * time.Hour).UTC() // a scheduled effect carries its run_at
		}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		got := appendEffect(nil, e.ID, e.Kind, e.Payload, at, []byte(sv), e.RunAt)
		if string(got) != string(want) {
			t.Errorf("appendEffect\n%s\njson.Marshal\n%s", got, want)
		}
		if size := effectSize(e.ID, e.Kind, e.Payload, []byte(sv)); size < len(got) {
			t.Errorf("effectSize %d < %d", size, len(got))
		}
	}
}
