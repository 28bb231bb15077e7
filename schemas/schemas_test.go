package schemas_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/schemas"
)

func validator(t *testing.T) *schemas.Validator {
	t.Helper()
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

const id = "0b7e5d2a-3c4f-4a1b-9e8d-7f6a5b4c3d2e"

// The Go types of pkg/effects marshal to messages the schemas accept: the
// completion is what effects.Client publishes (json.Marshal of a Completion).
func TestGoTypesValidate(t *testing.T) {
	v := validator(t)
	msg := "upstream returned 503"
	for name, c := range map[string]effects.Completion{
		"succeeded":         {EffectID: id, Kind: "send_email", Status: effects.StatusSucceeded, Completion: json.RawMessage(`{"sent":true}`), Attempts: 1, CompletedAt: time.Now()},
		"succeeded nothing": {EffectID: id, Kind: "send_email", Status: effects.StatusSucceeded, Attempts: 2, CompletedAt: time.Now()},
		"failed":            {EffectID: id, Kind: "send_email", Status: effects.StatusFailed, Error: &msg, Attempts: 3, CompletedAt: time.Now()},
	} {
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Completion(data); err != nil {
			t.Errorf("%s: %s: %v", name, data, err)
		}
	}
	data, err := json.Marshal(effects.Effect{ID: id, Kind: "http_request", Payload: json.RawMessage(`{"url":"https://example.com"}`),
		CreatedAt: time.Now(), SessionVariables: map[string]string{"x-hasura-role": "user"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Effect(data); err != nil {
		t.Errorf("%s: %v", data, err)
	}
	// A scheduled effect carries its run_at.
	data, err = json.Marshal(effects.Effect{ID: id, Kind: "email", Payload: json.RawMessage(`{}`),
		CreatedAt: time.Now(), RunAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"run_at":"`) {
		t.Errorf("run_at is not in %s", data)
	}
	if err := v.Effect(data); err != nil {
		t.Errorf("%s: %v", data, err)
	}
}

// The Hasura bodies the ingest's tests deliver validate.
func TestHasuraFixturesValidate(t *testing.T) {
	v := validator(t)
	paths, err := filepath.Glob("../internal/ingest/testdata/*.json")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.HasuraEvent(data); err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
		}
	}
}

// Malformed messages fail validation, so that a check against the schemas
// can fail.
func TestMalformedMessagesFail(t *testing.T) {
	v := validator(t)
	const effect = `{"id":"` + id + `","kind":"send_email","payload":{"to":"a@example.com"},"created_at":"2026-03-14T09:26:53.589793Z","session_variables":null}`
	const completion = `{"effect_id":"` + id + `","kind":"send_email","status":"failed","completion":null,"error":"boom","attempts":1,"completed_at":"2026-03-14T09:26:54Z"}`
	if err := v.Effect([]byte(effect)); err != nil {
		t.Fatalf("the base effect must validate: %v", err)
	}
	if err := v.Completion([]byte(completion)); err != nil {
		t.Fatalf("the base completion must validate: %v", err)
	}
	edit := func(base, old, new string) string {
		if !strings.Contains(base, old) {
			t.Fatalf("%q not in %s", old, base)
		}
		return strings.Replace(base, old, new, 1)
	}
	for name, msg := range map[string]string{
		"not JSON":                 `{"id":`,
		"not an object":            `[]`,
		"id missing":               edit(effect, `"id":"`+id+`",`, ``),
		"id not a UUID":            edit(effect, id, "row-1"),
		"kind with a dot":          edit(effect, `"send_email"`, `"send.email"`),
		"kind completed":           edit(effect, `"send_email"`, `"completed"`),
		"kind too long":            edit(effect, `"send_email"`, `"`+strings.Repeat("k", 65)+`"`),
		"payload null":             edit(effect, `{"to":"a@example.com"}`, `null`),
		"created_at not a time":    edit(effect, `2026-03-14T09:26:53.589793Z`, `yesterday`),
		"session variable number":  edit(effect, `"session_variables":null`, `"session_variables":{"x-hasura-user-id":7}`),
		"unknown effect field":     edit(effect, `"kind"`, `"priority":1,"kind"`),
		"status unknown":           edit(completion, `"failed"`, `"done"`),
		"attempts negative":        edit(completion, `"attempts":1`, `"attempts":-1`),
		"attempts fractional":      edit(completion, `"attempts":1`, `"attempts":1.5`),
		"failed without error":     edit(completion, `"error":"boom"`, `"error":null`),
		"failed with a completion": edit(completion, `"completion":null`, `"completion":{"sent":false}`),
		"succeeded with an error":  edit(completion, `"failed"`, `"succeeded"`),
		"effect_id missing":        edit(completion, `"effect_id":"`+id+`",`, ``),
		"completed_at missing":     edit(completion, `,"completed_at":"2026-03-14T09:26:54Z"`, ``),
	} {
		check := v.Completion
		if strings.Contains(msg, `"payload"`) {
			check = v.Effect
		}
		if err := check([]byte(msg)); err == nil {
			t.Errorf("%s: %s validated", name, msg)
		}
	}
	if err := v.HasuraEvent([]byte(`{"id":"e1","event":{"op":"UPDATE","data":{}}}`)); err != nil {
		t.Fatalf("the base event must validate: %v", err)
	}
	for name, body := range map[string]string{
		"event missing":  `{"id":"e1"}`,
		"op unknown":     `{"id":"e1","event":{"op":"TRUNCATE","data":{}}}`,
		"insert no row":  `{"id":"e1","event":{"op":"INSERT","data":{"old":null,"new":null}}}`,
		"row id no UUID": `{"id":"e1","event":{"op":"INSERT","data":{"new":{"id":"1","kind":"k"}}}}`,
		"row kind gone":  `{"id":"e1","event":{"op":"INSERT","data":{"new":{"id":"` + id + `"}}}}`,
		"event id space": `{"id":"e 1","event":{"op":"UPDATE","data":{}}}`,
	} {
		if err := v.HasuraEvent([]byte(body)); err == nil {
			t.Errorf("%s: %s validated", name, body)
		}
	}
}
