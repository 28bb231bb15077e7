package ingest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

const testSecret = "test-secret-5b0c2e9d"

// The rows of the fixtures.
const (
	fixtureRowID      = "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11"
	insertEventID     = "85558393-c75d-4d2f-9c15-e80591b83894"
	manualEventID     = "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a5b"
	v1RowID           = "6b0e2c1a-9f8d-4e7c-a6b5-c4d3e2f1a0b9"
	v1EventID         = "5a3b1c2d-7e8f-4a9b-8c7d-6e5f4a3b2c1d"
	fixtureTraceparen = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
)

type testBundle struct {
	nats    *testenv.NATS
	nc      *nats.Conn
	js      jetstream.JetStream
	srv     *ingest.Server
	handler http.Handler
	reg     *prometheus.Registry
}

// setup starts a NATS server of the test's own with the streams in place and
// an ingest on it; configure adjusts the config (secret testSecret).
func setup(t testing.TB, configure ...func(*ingest.Config)) *testBundle {
	t.Helper()
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatalf("ensure streams: %v", err)
	}
	return newBundle(t, n, nc, js, configure...)
}

func newBundle(t testing.TB, n *testenv.NATS, nc *nats.Conn, js jetstream.JetStream, configure ...func(*ingest.Config)) *testBundle {
	t.Helper()
	cfg := ingest.Config{WebhookSecret: testSecret}
	for _, f := range configure {
		f(&cfg)
	}
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := ingest.New(cfg, js, logger, reg)
	if err != nil {
		t.Fatalf("ingest.New: %v", err)
	}
	return &testBundle{nats: n, nc: nc, js: js, srv: srv, handler: srv.Handler(), reg: reg}
}

// post sends body the way Hasura does, with the secret, through the handler.
func (b *testBundle) post(t testing.TB, body []byte, mutate ...func(*http.Request)) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, ingest.EventsPath, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "hasura-graphql-engine/v2.40.0")
	req.Header.Set(ingest.SecretHeader, testSecret)
	for _, f := range mutate {
		f(req)
	}
	rec := httptest.NewRecorder()
	b.handler.ServeHTTP(rec, req)
	return rec
}

// reply decodes a JSON reply, checking its status and content type.
func reply(t testing.TB, rec *httptest.ResponseRecorder, wantCode int) map[string]any {
	t.Helper()
	if rec.Code != wantCode {
		t.Fatalf("status %d, want %d; body %s", rec.Code, wantCode, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("reply is not a JSON object: %v: %s", err, rec.Body)
	}
	return m
}

func (b *testBundle) stream(t testing.TB, name string) jetstream.Stream {
	t.Helper()
	s, err := b.js.Stream(context.Background(), name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	return s
}

func (b *testBundle) count(t testing.TB, stream string) uint64 {
	t.Helper()
	info, err := b.stream(t, stream).Info(context.Background())
	if err != nil {
		t.Fatalf("stream info %s: %v", stream, err)
	}
	return info.State.Msgs
}

func (b *testBundle) lastMsg(t testing.TB, stream, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	m, err := b.stream(t, stream).GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		t.Fatalf("last message on %s: %v", subject, err)
	}
	return m
}

func (b *testBundle) expectNothingStored(t testing.TB) {
	t.Helper()
	if n := b.count(t, effects.EffectsStream); n != 0 {
		t.Errorf("%d effects stored, want none", n)
	}
	if n := b.count(t, effects.CompletedStream); n != 0 {
		t.Errorf("%d completions stored, want none", n)
	}
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func newUUID(t testing.TB) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// rawEvent builds a Hasura v2 body around a row given as raw JSON, so that a
// test controls every byte of the payload.
func rawEvent(eventID, op, newRow string) []byte {
	return []byte(`{"id":` + jsonString(eventID) + `,"created_at":"2026-03-14T09:26:53.589793",` +
		`"trigger":{"name":"effects_dispatch"},"table":{"schema":"public","name":"effects"},` +
		`"event":{"op":` + jsonString(op) + `,"session_variables":null,"trace_context":null,` +
		`"data":{"old":null,"new":` + newRow + `}},"delivery_info":{"current_retry":0,"max_retries":5}}`)
}

func rawRow(id, kind, payload string) string {
	return `{"id":` + jsonString(id) + `,"kind":` + jsonString(kind) + `,"payload":` + payload +
		`,"status":"pending","created_at":"2026-03-14T09:26:53.589793+00:00","attempts":0}`
}

// event is a Hasura body as a map, for tests that remove or retype fields.
type event map[string]any

func newEvent(eventID, rowID, kind string) event {
	return event{
		"id":         eventID,
		"created_at": "2026-03-14T09:26:53.589793",
		"trigger":    map[string]any{"name": "effects_dispatch"},
		"table":      map[string]any{"schema": "public", "name": "effects"},
		"event": map[string]any{
			"op":                "INSERT",
			"session_variables": map[string]any{"x-hasura-role": "user"},
			"trace_context":     nil,
			"data": map[string]any{
				"old": nil,
				"new": map[string]any{
					"id": rowID, "kind": kind, "payload": map[string]any{"n": 1},
					"status": "pending", "created_at": "2026-03-14T09:26:53.589793+00:00",
				},
			},
		},
		"delivery_info": map[string]any{"current_retry": 0, "max_retries": 5},
	}
}

func (e event) bytes() []byte {
	b, err := json.Marshal(map[string]any(e))
	if err != nil {
		panic(err)
	}
	return b
}
func (e event) ev() map[string]any  { return e["event"].(map[string]any) }
func (e event) row() map[string]any { return e.ev()["data"].(map[string]any)["new"].(map[string]any) }

func TestInsertFixturePublishesTheEffect(t *testing.T) {
	t.Parallel()
	b := setup(t)

	got := reply(t, b.post(t, fixture(t, "insert.json")), http.StatusOK)
	want := map[string]any{"effect_id": fixtureRowID, "event_id": insertEventID, "duplicate": false, "sequence": float64(1)}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("reply %v, want %v", got, want)
	}

	msg := b.lastMsg(t, effects.EffectsStream, "effects.publish_rateset")
	if id := msg.Header.Get(jetstream.MsgIDHeader); id != insertEventID {
		t.Errorf("Nats-Msg-Id %q, want the event id %q", id, insertEventID)
	}
	if tp := msg.Header.Get(ingest.TraceparentHeader); tp != fixtureTraceparen {
		t.Errorf("Traceparent %q, want %q", tp, fixtureTraceparen)
	}
	// The payload and session variables keep the fixture's own spacing.
	wantData := `{"id":"` + fixtureRowID + `","kind":"publish_rateset","payload":{ "RATESET": 4512 },` +
		`"created_at":"2026-03-14T09:26:53.589793Z","session_variables":{
      "x-hasura-role": "user",
      "x-hasura-user-id": "b7e20ab9-b690-4f69-9d7c-60e5c5aa7b34"
    }}`
	if string(msg.Data) != wantData {
		t.Errorf("message\n%s\nwant\n%s", msg.Data, wantData)
	}

	// What a dispatcher decodes.
	var e effects.Effect
	if err := json.Unmarshal(msg.Data, &e); err != nil {
		t.Fatalf("the message does not decode as an effects.Effect: %v", err)
	}
	wantTime := time.Date(2026, 3, 14, 9, 26, 53, 589793000, time.UTC)
	if e.ID != fixtureRowID || e.Kind != "publish_rateset" || !e.CreatedAt.Equal(wantTime) ||
		e.SessionVariables["x-hasura-user-id"] != "b7e20ab9-b690-4f69-9d7c-60e5c5aa7b34" || e.SessionVariables["x-hasura-role"] != "user" {
		t.Errorf("decoded effect %+v", e)
	}
}

func TestInsertV1FixtureWrittenBySQL(t *testing.T) {
	t.Parallel()
	b := setup(t)

	got := reply(t, b.post(t, fixture(t, "insert-v1-sql-write.json")), http.StatusOK)
	if got["effect_id"] != v1RowID || got["event_id"] != v1EventID || got["duplicate"] != false {
		t.Errorf("reply %v", got)
	}
	msg := b.lastMsg(t, effects.EffectsStream, "effects.send_email")
	wantData := `{"id":"` + v1RowID + `","kind":"send_email",` +
		`"payload":{ "to": "ops@example.com", "subject": "nightly report", "body": "attached" },` +
		`"created_at":"2020-01-23T13:20:26.916303Z","session_variables":null}`
	if string(msg.Data) != wantData {
		t.Errorf("message\n%s\nwant\n%s", msg.Data, wantData)
	}
	if id := msg.Header.Get(jetstream.MsgIDHeader); id != v1EventID {
		t.Errorf("Nats-Msg-Id %q, want %q", id, v1EventID)
	}
	if tp, ok := msg.Header[ingest.TraceparentHeader]; ok {
		t.Errorf("Traceparent %q set without a trace context", tp)
	}
}

func TestRedeliveryIsStoredOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := fixture(t, "insert.json")

	first := reply(t, b.post(t, body), http.StatusOK)
	second := reply(t, b.post(t, body), http.StatusOK)
	if first["duplicate"] != false || second["duplicate"] != true {
		t.Errorf("duplicate flags %v then %v, want false then true", first["duplicate"], second["duplicate"])
	}
	if first["sequence"] != second["sequence"] {
		t.Errorf("sequences %v and %v: a duplicate reports the original's", first["sequence"], second["sequence"])
	}
	if n := b.count(t, effects.EffectsStream); n != 1 {
		t.Errorf("%d messages stored, want 1", n)
	}
}

// Hasura runs many deliveries at once and may deliver one event twice at
// the same moment; concurrent requests must not wait on each other, and
// JetStream stores the event once.
func TestConcurrentRedeliveriesAreStoredOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := fixture(t, "insert.json")

	const n = 20
	var wg sync.WaitGroup
	recs := make([]*httptest.ResponseRecorder, n)
	for i := range n {
		wg.Go(func() { recs[i] = b.post(t, body) })
	}
	wg.Wait()
	fresh := 0
	for _, rec := range recs {
		if reply(t, rec, http.StatusOK)["duplicate"] == false {
			fresh++
		}
	}
	if fresh != 1 {
		t.Errorf("%d replies say not a duplicate, want exactly 1", fresh)
	}
	if got := b.count(t, effects.EffectsStream); got != 1 {
		t.Errorf("%d messages stored, want 1", got)
	}
}

func TestManualInvocationRunsAgain(t *testing.T) {
	t.Parallel()
	b := setup(t)

	reply(t, b.post(t, fixture(t, "insert.json")), http.StatusOK)
	got := reply(t, b.post(t, fixture(t, "manual.json")), http.StatusOK)
	if got["effect_id"] != fixtureRowID || got["event_id"] != manualEventID || got["duplicate"] != false || got["sequence"] != float64(2) {
		t.Errorf("reply %v", got)
	}
	if n := b.count(t, effects.EffectsStream); n != 2 {
		t.Errorf("%d messages stored, want 2", n)
	}
	msg := b.lastMsg(t, effects.EffectsStream, "effects.publish_rateset")
	if id := msg.Header.Get(jetstream.MsgIDHeader); id != manualEventID {
		t.Errorf("Nats-Msg-Id %q, want the MANUAL event's id %q", id, manualEventID)
	}
	wantData := `{"id":"` + fixtureRowID + `","kind":"publish_rateset","payload":{ "RATESET": 4512 },` +
		`"created_at":"2026-03-14T09:26:53.589793Z","session_variables":{ "x-hasura-role": "admin" }}`
	if string(msg.Data) != wantData {
		t.Errorf("message\n%s\nwant\n%s", msg.Data, wantData)
	}
	if _, ok := msg.Header[ingest.TraceparentHeader]; ok {
		t.Error("Traceparent set for a null trace context")
	}

	// The same MANUAL delivery again is a duplicate.
	if again := reply(t, b.post(t, fixture(t, "manual.json")), http.StatusOK); again["duplicate"] != true {
		t.Errorf("a redelivered MANUAL event: %v", again)
	}
}

func TestUpdateAndDeleteAreIgnored(t *testing.T) {
	t.Parallel()
	b := setup(t)

	rec := b.post(t, fixture(t, "update.json"))
	reply(t, rec, http.StatusOK)
	if got := rec.Body.String(); got != `{"ignored":true,"op":"UPDATE"}`+"\n" {
		t.Errorf("reply %s", got)
	}

	del := newEvent(newUUID(t), newUUID(t), "echo")
	del.ev()["op"] = "DELETE"
	data := del.ev()["data"].(map[string]any)
	data["old"], data["new"] = data["new"], nil
	rec = b.post(t, del.bytes())
	if got := reply(t, rec, http.StatusOK); got["ignored"] != true || got["op"] != "DELETE" {
		t.Errorf("reply %v", got)
	}
	b.expectNothingStored(t)
}

func TestPayloadIsPublishedByteForByte(t *testing.T) {
	t.Parallel()
	b := setup(t)

	for _, tc := range []struct{ name, payload, want string }{
		{"spacing and html", `{"a":  1, "html":"<b>"}`, ``},
		{"escapes and numbers", `{"s": "<script>&amp;</script>", "u": "\u00e9\u2028 é", "n": 1.50, "big": 12345678901234567890, "e": 1E+3}`, ``},
		{"newlines and tabs", "{\n\t\"nested\": {\"list\": [ 1,2 , 3 ]},\n\t\"empty\": {}\n}", ``},
		{"array", `[1, "two", null]`, ``},
		{"string", `"just a string"`, ``},
		{"number", `42`, ``},
		{"empty object", `{}`, ``},
		{"null becomes the column default", `null`, `{}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := newUUID(t)
			reply(t, b.post(t, rawEvent(newUUID(t), "INSERT", rawRow(id, "bytes", tc.payload))), http.StatusOK)
			want := tc.want
			if want == "" {
				want = tc.payload
			}
			wantData := `{"id":"` + id + `","kind":"bytes","payload":` + want +
				`,"created_at":"2026-03-14T09:26:53.589793Z","session_variables":null}`
			if got := string(b.lastMsg(t, effects.EffectsStream, "effects.bytes").Data); got != wantData {
				t.Errorf("message\n%s\nwant\n%s", got, wantData)
			}
		})
	}

	t.Run("missing payload becomes the column default", func(t *testing.T) {
		id := newUUID(t)
		row := `{"id":"` + id + `","kind":"bytes"}`
		reply(t, b.post(t, rawEvent(newUUID(t), "INSERT", row)), http.StatusOK)
		wantData := `{"id":"` + id + `","kind":"bytes","payload":{},"created_at":"2026-03-14T09:26:53.589793Z","session_variables":null}`
		if got := string(b.lastMsg(t, effects.EffectsStream, "effects.bytes").Data); got != wantData {
			t.Errorf("message\n%s\nwant\n%s", got, wantData)
		}
	})
}

func TestCreatedAtForms(t *testing.T) {
	t.Parallel()
	b := setup(t)

	const absent = "(absent)"
	for _, tc := range []struct {
		name, row, event, want string
	}{
		{"row with +00:00 as row_to_json writes it", "2026-03-14T09:26:53.589793+00:00", "", "2026-03-14T09:26:53.589793Z"},
		{"row without zone (v2 form)", "2026-03-14T09:26:53.589793", "", "2026-03-14T09:26:53.589793Z"},
		{"row with Z (v1 form)", "2020-01-23T13:20:26.916303Z", "", "2020-01-23T13:20:26.916303Z"},
		{"row with +00", "2026-03-14T09:26:53.589793+00", "", "2026-03-14T09:26:53.589793Z"},
		{"row with another offset", "2026-03-14T11:26:53.5+02:00", "", "2026-03-14T09:26:53.5Z"},
		{"row with a compact offset", "2026-03-14T09:26:53-0330", "", "2026-03-14T12:56:53Z"},
		{"row with a space, as a text cast writes it", "2026-03-14 09:26:53.589793+00", "", "2026-03-14T09:26:53.589793Z"},
		{"row without fractional seconds", "2026-03-14T09:26:53", "", "2026-03-14T09:26:53Z"},
		{"no row created_at: the event's v2 created_at", absent, "2026-03-14T10:00:00.000120", "2026-03-14T10:00:00.00012Z"},
		{"no row created_at: the event's v1 created_at", absent, "2020-01-23T13:20:26.916303Z", "2020-01-23T13:20:26.916303Z"},
		{"null row created_at: the event's", "null", "2026-03-14T10:00:00", "2026-03-14T10:00:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEvent(newUUID(t), newUUID(t), "times")
			switch tc.row {
			case absent:
				delete(e.row(), "created_at")
			case "null":
				e.row()["created_at"] = nil
			default:
				e.row()["created_at"] = tc.row
			}
			if tc.event != "" {
				e["created_at"] = tc.event
			}
			reply(t, b.post(t, e.bytes()), http.StatusOK)
			var got struct {
				CreatedAt string `json:"created_at"`
			}
			if err := json.Unmarshal(b.lastMsg(t, effects.EffectsStream, "effects.times").Data, &got); err != nil {
				t.Fatal(err)
			}
			if got.CreatedAt != tc.want {
				t.Errorf("created_at %q, want %q", got.CreatedAt, tc.want)
			}
		})
	}

	t.Run("no created_at anywhere: now", func(t *testing.T) {
		e := newEvent(newUUID(t), newUUID(t), "times")
		delete(e.row(), "created_at")
		delete(e, "created_at")
		before := time.Now()
		reply(t, b.post(t, e.bytes()), http.StatusOK)
		after := time.Now()
		var got effects.Effect
		if err := json.Unmarshal(b.lastMsg(t, effects.EffectsStream, "effects.times").Data, &got); err != nil {
			t.Fatal(err)
		}
		if got.CreatedAt.Before(before) || got.CreatedAt.After(after) || got.CreatedAt.Location() != time.UTC {
			t.Errorf("created_at %s, want a UTC time between %s and %s", got.CreatedAt, before, after)
		}
	})
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	b := setup(t)

	edit := func(f func(e event)) []byte {
		e := newEvent(newUUID(t), newUUID(t), "echo")
		f(e)
		return e.bytes()
	}
	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"not JSON", []byte(`{"id": `), "the body is not JSON"},
		{"garbage", []byte(`hello`), "the body is not JSON: invalid character 'h'"},
		{"empty body", nil, "the body is not JSON"},
		{"trailing data", []byte(`{} {}`), "the body is not JSON"},
		{"an array", []byte(`[1, 2]`), "the body must be a JSON object (a Hasura event), not an array"},
		{"no event id", edit(func(e event) { delete(e, "id") }), "id (the Hasura event id) is missing"},
		{"event id a number", edit(func(e event) { e["id"] = 7 }), "id must be a string, not a number"},
		{"event id with a space", edit(func(e event) { e["id"] = "a b" }), `id (the Hasura event id) "a b" may only contain visible ASCII`},
		{"event id too long", edit(func(e event) { e["id"] = strings.Repeat("x", 129) }), "id (the Hasura event id) is 129 bytes long, the limit is 128"},
		{"no event", edit(func(e event) { delete(e, "event") }), "event is missing"},
		{"event a string", edit(func(e event) { e["event"] = "INSERT" }), "event must be an object, not a string"},
		{"no op", edit(func(e event) { delete(e.ev(), "op") }), "event.op is missing"},
		{"unknown op", edit(func(e event) { e.ev()["op"] = "TRUNCATE" }), `event.op "TRUNCATE" is not INSERT, UPDATE, DELETE or MANUAL`},
		{"lowercase op", edit(func(e event) { e.ev()["op"] = "insert" }), `event.op "insert" is not`},
		{"op a number", edit(func(e event) { e.ev()["op"] = 1 }), "event.op must be a string, not a number"},
		{"no data", edit(func(e event) { delete(e.ev(), "data") }), "event.data.new is missing: INSERT events carry the row there"},
		{"no new row", edit(func(e event) { e.ev()["data"].(map[string]any)["new"] = nil }), "event.data.new is missing"},
		{"MANUAL without a row", edit(func(e event) {
			e.ev()["op"] = "MANUAL"
			e.ev()["data"].(map[string]any)["new"] = nil
		}), "event.data.new is missing: MANUAL events carry the row there"},
		{"new row a string", edit(func(e event) { e.ev()["data"].(map[string]any)["new"] = "row" }), "event.data.new must be an object, not a string"},
		{"row without id", edit(func(e event) { delete(e.row(), "id") }), "event.data.new.id is missing"},
		{"row id not a UUID", edit(func(e event) { e.row()["id"] = "42" }), `event.data.new.id "42" is not a UUID`},
		{"row id a number", edit(func(e event) { e.row()["id"] = 42 }), "event.data.new.id must be a string, not a number"},
		{"row without kind", edit(func(e event) { delete(e.row(), "kind") }), "event.data.new.kind is missing"},
		{"row kind null", edit(func(e event) { e.row()["kind"] = nil }), "event.data.new.kind is missing"},
		{"row kind a number", edit(func(e event) { e.row()["kind"] = 3 }), "event.data.new.kind must be a string, not a number"},
		{"row kind an object", edit(func(e event) { e.row()["kind"] = map[string]any{} }), "event.data.new.kind must be a string, not an object"},
		{"row kind a boolean", edit(func(e event) { e.row()["kind"] = true }), "event.data.new.kind must be a string, not a boolean"},
		{"row created_at not a time", edit(func(e event) { e.row()["created_at"] = "yesterday" }), `event.data.new.created_at "yesterday" is not a timestamp`},
		{"row created_at a number", edit(func(e event) { e.row()["created_at"] = 1700000000 }), "event.data.new.created_at must be a string, not a number"},
		{"event created_at not a time, needed", edit(func(e event) {
			delete(e.row(), "created_at")
			e["created_at"] = "2026-13-45"
		}), `created_at "2026-13-45" is not a timestamp`},
		{"session variables an array", edit(func(e event) { e.ev()["session_variables"] = []any{"x"} }), "event.session_variables must be an object of strings or null"},
		{"session variables a string", edit(func(e event) { e.ev()["session_variables"] = "admin" }), "event.session_variables must be an object of strings or null"},
		{"session variable not a string", edit(func(e event) { e.ev()["session_variables"] = map[string]any{"x-hasura-user-id": 7} }), "event.session_variables must be an object of strings or null"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := reply(t, b.post(t, tc.body), http.StatusBadRequest)
			msg, _ := got["error"].(string)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q, want it to contain %q", msg, tc.want)
			}
			if len(got) != 1 {
				t.Errorf("reply %v, want only an error", got)
			}
		})
	}
	b.expectNothingStored(t)
}

// A malformed trace context is a courtesy gone wrong, not a bad event.
func TestTraceContextNeverFailsAnEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)

	for _, tc := range []struct {
		name string
		tc   any
		want string
	}{
		{"valid, not sampled", map[string]any{"trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736", "span_id": "00f067aa0ba902b7", "sampling_state": "0"},
			"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
		{"valid, no sampling state", map[string]any{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
			"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
		{"short trace id", map[string]any{"trace_id": "4bf92f35", "span_id": "00f067aa0ba902b7", "sampling_state": "1"}, ""},
		{"zero trace id", map[string]any{"trace_id": strings.Repeat("0", 32), "span_id": "00f067aa0ba902b7"}, ""},
		{"not hex", map[string]any{"trace_id": strings.Repeat("g", 32), "span_id": "00f067aa0ba902b7"}, ""},
		{"numbers", map[string]any{"trace_id": 1, "span_id": 2}, ""},
		{"a string", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"an array", []any{1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEvent(newUUID(t), newUUID(t), "traced")
			e.ev()["trace_context"] = tc.tc
			reply(t, b.post(t, e.bytes()), http.StatusOK)
			msg := b.lastMsg(t, effects.EffectsStream, "effects.traced")
			if got := msg.Header.Get(ingest.TraceparentHeader); got != tc.want {
				t.Errorf("Traceparent %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSecret(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := fixture(t, "insert.json")

	for _, tc := range []struct {
		name   string
		header []string
	}{
		{"missing", nil},
		{"empty", []string{""}},
		{"wrong", []string{"not-the-secret"}},
		{"a prefix", []string{testSecret[:len(testSecret)-1]}},
		{"longer", []string{testSecret + "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := reply(t, b.post(t, body, func(r *http.Request) { r.Header[ingest.SecretHeader] = tc.header }), http.StatusUnauthorized)
			if msg, _ := got["error"].(string); !strings.Contains(msg, ingest.SecretHeader) {
				t.Errorf("error %q does not name the header", msg)
			}
		})
	}
	b.expectNothingStored(t)
	reply(t, b.post(t, body), http.StatusOK)
}

func TestInsecureModeNeedsNoSecret(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *ingest.Config) { c.WebhookSecret, c.InsecureNoSecret = "", true })
	reply(t, b.post(t, fixture(t, "insert.json"), func(r *http.Request) { r.Header.Del(ingest.SecretHeader) }), http.StatusOK)

	// The flag only allows a missing secret; a configured one is still checked.
	b = setup(t, func(c *ingest.Config) { c.InsecureNoSecret = true })
	reply(t, b.post(t, fixture(t, "insert.json"), func(r *http.Request) { r.Header.Del(ingest.SecretHeader) }), http.StatusUnauthorized)
}

func TestMethodAndPath(t *testing.T) {
	t.Parallel()
	b := setup(t)

	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodHead} {
		req := httptest.NewRequest(method, ingest.EventsPath, nil)
		req.Header.Set(ingest.SecretHeader, testSecret)
		rec := httptest.NewRecorder()
		b.handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != http.MethodPost {
			t.Errorf("%s: status %d, Allow %q; want 405 and POST", method, rec.Code, rec.Header().Get("Allow"))
		}
	}
	for _, path := range []string{"/", "/hasura/events/", "/hasura", "/events"} {
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(fixture(t, "insert.json")))
		req.Header.Set(ingest.SecretHeader, testSecret)
		rec := httptest.NewRecorder()
		b.handler.ServeHTTP(rec, req)
		reply(t, rec, http.StatusNotFound)
	}
	b.expectNothingStored(t)
}

func TestBodyLimit(t *testing.T) {
	t.Parallel()
	const payloadLimit = 1024
	b := setup(t, func(c *ingest.Config) {
		c.MaxPayloadBytes = payloadLimit
		c.MaxBodyBytes = payloadLimit + ingest.BodyOverhead
	})
	// Padding in a column the ingest skips makes a body of any size.
	padded := func(size int) []byte {
		e := newEvent(newUUID(t), newUUID(t), "echo")
		e.row()["padding"] = ""
		pad := size - len(e.bytes())
		e.row()["padding"] = strings.Repeat("p", pad)
		body := e.bytes()
		if len(body) != size {
			t.Fatalf("padded body is %d bytes, want %d", len(body), size)
		}
		return body
	}
	limit := payloadLimit + ingest.BodyOverhead
	hideLength := func(r *http.Request) {
		r.Body = io.NopCloser(struct{ io.Reader }{r.Body})
		r.ContentLength = -1
	}

	got := reply(t, b.post(t, padded(limit+1)), http.StatusRequestEntityTooLarge)
	if msg, _ := got["error"].(string); !strings.Contains(msg, "EFFECTS_MAX_BODY_BYTES") {
		t.Errorf("error %q does not name the setting", msg)
	}
	reply(t, b.post(t, padded(limit+1), hideLength), http.StatusRequestEntityTooLarge)
	reply(t, b.post(t, padded(10*limit), hideLength), http.StatusRequestEntityTooLarge)
	b.expectNothingStored(t)

	reply(t, b.post(t, padded(limit)), http.StatusOK)
	reply(t, b.post(t, padded(limit), hideLength), http.StatusOK)
}

func TestRowsThatCanNeverSucceedAreFailed(t *testing.T) {
	t.Parallel()
	const payloadLimit = 1024
	b := setup(t, func(c *ingest.Config) { c.MaxPayloadBytes = payloadLimit })

	long := strings.Repeat("k", 300)
	for _, tc := range []struct {
		name, kind, payload string
		subject, storedKind string
		reason              string
	}{
		{"kind with a dot", "a.b", `{}`, effects.InvalidKindSubject, "a.b",
			`kind "a.b" is not valid: kind "a.b" may only contain letters, digits, '_' and '-'`},
		{"kind completed", "completed", `{}`, effects.InvalidKindSubject, "completed",
			`kind "completed" is not valid: "completed" is reserved for completion subjects`},
		{"empty kind", "", `{}`, effects.InvalidKindSubject, "", `kind "" is not valid: kind is empty`},
		{"kind with a wildcard", "a*", `{}`, effects.InvalidKindSubject, "a*", `kind "a*" is not valid: kind "a*" may only contain letters, digits, '_' and '-'`},
		{"kind with a space and html", "send <b>email</b>", `{}`, effects.InvalidKindSubject, "send <b>email</b>", `kind "send <b>email</b>" is not valid: kind "send <b>email</b>" may only contain letters, digits, '_' and '-'`},
		{"kind too long", long, `{}`, effects.InvalidKindSubject, long[:256],
			`kind "` + long[:64] + `"… (300 bytes) is not valid: kind is 300 bytes long, the limit is 64`},
		{"payload over the limit", "send_email", `{"blob":"` + strings.Repeat("x", payloadLimit) + `"}`,
			"effects.completed.send_email", "send_email", "payload is 1035 bytes, the limit is 1024 (EFFECTS_MAX_PAYLOAD_BYTES)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rowID, eventID := newUUID(t), newUUID(t)
			before := time.Now()
			got := reply(t, b.post(t, rawEvent(eventID, "INSERT", rawRow(rowID, tc.kind, tc.payload))), http.StatusOK)
			after := time.Now()
			want := map[string]any{"effect_id": rowID, "event_id": eventID, "rejected": tc.reason}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("reply\n%v\nwant\n%v", got, want)
			}

			msg := b.lastMsg(t, effects.CompletedStream, tc.subject)
			c, err := effects.ParseCompletion(msg.Data)
			if err != nil {
				t.Fatalf("completion: %v", err)
			}
			if c.EffectID != rowID || c.Kind != tc.storedKind || c.Status != effects.StatusFailed ||
				c.Error == nil || *c.Error != tc.reason || c.Attempts != 0 || string(c.Completion) != "null" {
				t.Errorf("completion %s", msg.Data)
			}
			if c.CompletedAt.Before(before.Add(-time.Millisecond)) || c.CompletedAt.After(after) {
				t.Errorf("completed_at %s, want between %s and %s", c.CompletedAt, before, after)
			}
			wantID := effects.CompletionMsgID(effects.Ref{ID: rowID, EventID: eventID}, effects.StatusFailed)
			if id := msg.Header.Get(jetstream.MsgIDHeader); id != wantID {
				t.Errorf("Nats-Msg-Id %q, want %q", id, wantID)
			}
		})
	}
	if n := b.count(t, effects.EffectsStream); n != 0 {
		t.Errorf("%d effects published for rows that can never succeed", n)
	}

	t.Run("a redelivery stores the failure once", func(t *testing.T) {
		before := b.count(t, effects.CompletedStream)
		body := rawEvent(newUUID(t), "INSERT", rawRow(newUUID(t), "completed", `{}`))
		reply(t, b.post(t, body), http.StatusOK)
		reply(t, b.post(t, body), http.StatusOK)
		if n := b.count(t, effects.CompletedStream) - before; n != 1 {
			t.Errorf("%d completions stored, want 1", n)
		}
	})

	// PostgreSQL's row_to_json writes timestamps RFC 3339 cannot hold; a
	// 400 for them would leave the row pending once Hasura gives up.
	for _, createdAt := range []string{"infinity", "-infinity", "10000-01-01T00:00:00+00:00", "0044-03-15T00:00:00+00:00 BC"} {
		t.Run("created_at "+createdAt, func(t *testing.T) {
			rowID, eventID := newUUID(t), newUUID(t)
			e := newEvent(eventID, rowID, "send_email")
			e.row()["created_at"] = createdAt
			reason := "created_at " + strconv.Quote(createdAt) + " cannot be carried by an effect message (years 0 to 9999 only)"
			got := reply(t, b.post(t, e.bytes()), http.StatusOK)
			if got["rejected"] != reason {
				t.Errorf("reply %v, want rejected %q", got, reason)
			}
			c, err := effects.ParseCompletion(b.lastMsg(t, effects.CompletedStream, "effects.completed.send_email").Data)
			if err != nil {
				t.Fatal(err)
			}
			if c.EffectID != rowID || c.Status != effects.StatusFailed || c.Error == nil || *c.Error != reason {
				t.Errorf("completion %+v", c)
			}
		})
	}

	t.Run("a payload at the limit is published", func(t *testing.T) {
		payload := `{"blob":"` + strings.Repeat("x", payloadLimit-11) + `"}`
		if len(payload) != payloadLimit {
			t.Fatalf("payload is %d bytes", len(payload))
		}
		got := reply(t, b.post(t, rawEvent(newUUID(t), "INSERT", rawRow(newUUID(t), "send_email", payload))), http.StatusOK)
		if got["duplicate"] != false {
			t.Errorf("reply %v", got)
		}
	})
}

// EFFECTS_MAX_PAYLOAD_BYTES set above what the NATS server accepts (1 MiB by
// default): such a row could never be delivered either, so it is failed.
func TestMessageOverNATSMaxPayloadIsFailed(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *ingest.Config) { c.MaxPayloadBytes = 2 << 20 })

	rowID, eventID := newUUID(t), newUUID(t)
	payload := `"` + strings.Repeat("x", 1100<<10) + `"`
	got := reply(t, b.post(t, rawEvent(eventID, "INSERT", rawRow(rowID, "big", payload))), http.StatusOK)
	reason, _ := got["rejected"].(string)
	if !strings.HasPrefix(reason, "the effect message is ") || !strings.HasSuffix(reason, "more than the NATS server accepts (max_payload 1048576)") {
		t.Errorf("reply %v", got)
	}
	c, err := effects.ParseCompletion(b.lastMsg(t, effects.CompletedStream, "effects.completed.big").Data)
	if err != nil {
		t.Fatal(err)
	}
	if c.EffectID != rowID || c.Status != effects.StatusFailed || c.Error == nil || *c.Error != reason {
		t.Errorf("completion %+v", c)
	}
	if v := counterValue(t, b.reg, "effects_ingested_total", map[string]string{"kind": "big", "outcome": "rejected"}); v != 1 {
		t.Errorf("rejected{kind=big} = %v, want 1", v)
	}
	if n := b.count(t, effects.EffectsStream); n != 0 {
		t.Errorf("%d effects stored", n)
	}
}

// TestEffectMessageSizeIsCheckedBeforePublishing: payload and session
// variables each within their limits, together over the server's
// max_payload. The row is failed with its size and the limit, and the
// message is never published. One byte less is published: the count
// matches the server's.
func TestEffectMessageSizeIsCheckedBeforePublishing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	spy := spyEffects(t, b.nats)
	limit := int(b.nc.MaxPayload())
	payload := `"` + strings.Repeat("p", 400<<10) + `"`
	event := func(rowID, eventID string, svLen int) []byte {
		sv := `{"x-hasura-role":"user","x-hasura-blob":"` + strings.Repeat("s", svLen) + `"}`
		return bytes.Replace(rawEvent(eventID, "INSERT", rawRow(rowID, "big_sv", payload)),
			[]byte(`"session_variables":null`), []byte(`"session_variables":`+sv), 1)
	}

	// A small message first, to learn the envelope's size.
	reply(t, b.post(t, event(newUUID(t), newUUID(t), 1)), http.StatusOK)
	testenv.WaitFor(t, 5*time.Second, "the effect at the spy", func() bool { return spy.calls.Load() == 1 })
	small := int(spy.lastSize.Load())
	atLimit := 1 + limit - small

	got := reply(t, b.post(t, event(newUUID(t), newUUID(t), atLimit)), http.StatusOK)
	testenv.WaitFor(t, 5*time.Second, "the second effect at the spy", func() bool { return spy.calls.Load() == 2 })
	if got["duplicate"] != false || spy.lastSize.Load() != int64(limit) {
		t.Fatalf("a message of exactly max_payload (%d bytes): reply %v, published %d bytes", limit, got, spy.lastSize.Load())
	}

	rowID := newUUID(t)
	got = reply(t, b.post(t, event(rowID, newUUID(t), atLimit+1)), http.StatusOK)
	reason, _ := got["rejected"].(string)
	want := fmt.Sprintf("the effect message is %d bytes (payload %d, session_variables %d, the rest envelope and headers), "+
		"more than the NATS server accepts (max_payload %d)", limit+1, len(payload), atLimit+1+len(`{"x-hasura-role":"user","x-hasura-blob":""}`), limit)
	if reason != want {
		t.Errorf("reason\n%s\nwant\n%s", reason, want)
	}
	c, err := effects.ParseCompletion(b.lastMsg(t, effects.CompletedStream, "effects.completed.big_sv").Data)
	if err != nil {
		t.Fatal(err)
	}
	if c.EffectID != rowID || c.Status != effects.StatusFailed || c.Error == nil || *c.Error != reason {
		t.Errorf("completion %+v", c)
	}
	if n := b.count(t, effects.EffectsStream); n != 2 {
		t.Errorf("%d effects stored, want 2", n)
	}
	// The failed completion was stored after the oversized effect was
	// refused: had that effect been published, it reached the spy's
	// connection before the round trip ends.
	if err := spy.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := spy.calls.Load(); n != 2 {
		t.Errorf("%d effects published, want 2: the oversized message was published", n)
	}
}

// effectSpy counts the effect messages (not completions) published to the
// NATS server and keeps the size of the last one, as the server counts it
// against max_payload.
type effectSpy struct {
	nc       *nats.Conn
	calls    atomic.Int64
	lastSize atomic.Int64
}

// spyEffects subscribes an effectSpy, on a connection of its own, to every
// effect subject of n.
func spyEffects(t *testing.T, n *testenv.NATS) *effectSpy {
	t.Helper()
	nc, _ := n.Connect(t)
	s := &effectSpy{nc: nc}
	if _, err := nc.Subscribe("effects.*", func(m *nats.Msg) {
		size := len(m.Data)
		if len(m.Header) > 0 {
			size += len("NATS/1.0\r\n\r\n")
			for k, vs := range m.Header {
				for _, v := range vs {
					size += len(k) + len(": \r\n") + len(v)
				}
			}
		}
		s.lastSize.Store(int64(size))
		s.calls.Add(1)
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStreamMissingIs503(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	b := newBundle(t, n, nc, js, func(c *ingest.Config) {
		c.PublishTimeout = 2 * time.Second
		c.RetryAfter = 1500 * time.Millisecond
	})
	for _, body := range [][]byte{
		fixture(t, "insert.json"),
		rawEvent(newUUID(t), "INSERT", rawRow(newUUID(t), "a.b", `{}`)), // a rejection needs its completion stored too
	} {
		rec := b.post(t, body)
		got := reply(t, rec, http.StatusServiceUnavailable)
		if ra := rec.Header().Get("Retry-After"); ra != "2" {
			t.Errorf("Retry-After %q, want 2 (1.5s rounded up)", ra)
		}
		if msg, _ := got["error"].(string); !strings.Contains(msg, "JetStream did not store the effect") {
			t.Errorf("error %q", msg)
		}
	}
}

// A NATS where something listens on the effect subjects but no stream stores
// them never acks: the request gives up after EFFECTS_PUBLISH_TIMEOUT.
func TestNoAckInTimeIs503(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	if _, err := nc.Subscribe("effects.>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	b := newBundle(t, n, nc, js, func(c *ingest.Config) { c.PublishTimeout = 200 * time.Millisecond })

	start := time.Now()
	rec := b.post(t, fixture(t, "insert.json"))
	elapsed := time.Since(start)
	got := reply(t, rec, http.StatusServiceUnavailable)
	if msg, _ := got["error"].(string); !strings.Contains(msg, "no ack within 200ms (EFFECTS_PUBLISH_TIMEOUT)") {
		t.Errorf("error %q", msg)
	}
	if rec.Header().Get("Retry-After") != "5" {
		t.Errorf("Retry-After %q, want the default 5", rec.Header().Get("Retry-After"))
	}
	if elapsed < 200*time.Millisecond {
		t.Errorf("answered after %s, before the publish timeout", elapsed)
	}
	if v := counterValue(t, b.reg, "effects_ingest_publish_errors_total", map[string]string{"reason": "timeout"}); v != 1 {
		t.Errorf("publish_errors{reason=timeout} = %v, want 1", v)
	}
	if got := histogramCountWith(t, b.reg, "effects_ingest_request_duration_seconds", map[string]string{"code": "503"}); got != 1 {
		t.Errorf("request_duration{code=503} count %d, want 1", got)
	}
}

func TestNATSDownIs503ThenRecovers(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *ingest.Config) {
		c.PublishTimeout = 300 * time.Millisecond
		c.RetryAfter = 7 * time.Second
	})
	body := fixture(t, "insert.json")
	down := b.nc.StatusChanged(nats.RECONNECTING)
	b.nats.Shutdown()
	<-down // the ingest's connection (the same one) has noticed

	for _, body := range [][]byte{body, rawEvent(newUUID(t), "INSERT", rawRow(newUUID(t), "completed", `{}`))} {
		rec := b.post(t, body)
		got := reply(t, rec, http.StatusServiceUnavailable)
		if ra := rec.Header().Get("Retry-After"); ra != "7" {
			t.Errorf("Retry-After %q, want 7", ra)
		}
		if msg, _ := got["error"].(string); !strings.Contains(msg, "not connected to NATS") || len(got) != 1 {
			t.Errorf("reply %v, want only an error saying NATS is not connected", got)
		}
	}
	if v := counterValue(t, b.reg, "effects_ingest_requests_total", map[string]string{"code": "503"}); v != 2 {
		t.Errorf("requests{code=503} = %v, want 2", v)
	}
	if v := counterValue(t, b.reg, "effects_ingested_total", nil); v != 0 {
		t.Errorf("ingested = %v while JetStream was down, want 0", v)
	}
	if v := counterValue(t, b.reg, "effects_ingest_publish_errors_total", map[string]string{"reason": "error"}); v != 2 {
		t.Errorf("publish_errors{reason=error} = %v, want 2", v)
	}

	// Hasura retries after Retry-After; by then NATS is back. The message
	// the client buffered while NATS was down may have landed first, so the
	// retry may be a duplicate, but the effect is stored once.
	b.nats.Restart(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		rec := b.post(t, body)
		if rec.Code == http.StatusOK {
			break
		}
		if rec.Code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("after the restart: %d %s", rec.Code, rec.Body)
		}
	}
	if n := b.count(t, effects.EffectsStream); n != 1 {
		t.Errorf("%d effects stored, want 1", n)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)

	reply(t, b.post(t, fixture(t, "insert.json")), http.StatusOK)
	reply(t, b.post(t, fixture(t, "insert.json")), http.StatusOK)
	reply(t, b.post(t, fixture(t, "manual.json")), http.StatusOK)
	reply(t, b.post(t, fixture(t, "update.json")), http.StatusOK)
	reply(t, b.post(t, rawEvent(newUUID(t), "INSERT", rawRow(newUUID(t), "a.b", `{}`))), http.StatusOK)
	reply(t, b.post(t, rawEvent(newUUID(t), "INSERT", rawRow(newUUID(t), "other.bad", `{}`))), http.StatusOK)
	reply(t, b.post(t, []byte(`{}`)), http.StatusBadRequest)
	reply(t, b.post(t, nil, func(r *http.Request) { r.Header.Del(ingest.SecretHeader) }), http.StatusUnauthorized)

	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"effects_ingested_total", map[string]string{"kind": "publish_rateset", "outcome": "published"}, 2},
		{"effects_ingested_total", map[string]string{"kind": "publish_rateset", "outcome": "duplicate"}, 1},
		{"effects_ingested_total", map[string]string{"kind": "publish_rateset", "outcome": "ignored"}, 1},
		{"effects_ingested_total", map[string]string{"kind": "~invalid", "outcome": "rejected"}, 2},
		{"effects_ingested_total", nil, 6},
		{"effects_ingest_requests_total", map[string]string{"code": "200"}, 6},
		{"effects_ingest_requests_total", map[string]string{"code": "400"}, 1},
		{"effects_ingest_requests_total", map[string]string{"code": "401"}, 1},
	} {
		if got := counterValue(t, b.reg, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	// Three effect acks and two completion acks.
	if got := histogramCount(t, b.reg, "effects_ingest_publish_seconds"); got != 5 {
		t.Errorf("effects_ingest_publish_seconds count %d, want 5", got)
	}
	// Every request is timed under its status code.
	for code, want := range map[string]uint64{"200": 6, "400": 1, "401": 1, "503": 0} {
		if got := histogramCountWith(t, b.reg, "effects_ingest_request_duration_seconds", map[string]string{"code": code}); got != want {
			t.Errorf("effects_ingest_request_duration_seconds{code=%q} count %d, want %d", code, got, want)
		}
	}
	if got := counterValue(t, b.reg, "effects_ingest_publish_errors_total", nil); got != 0 {
		t.Errorf("effects_ingest_publish_errors_total = %v, want 0", got)
	}
}

func TestNewRefusesABadConfig(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	if _, err := ingest.New(ingest.Config{}, js, nil, nil); err == nil || !strings.Contains(err.Error(), "EFFECTS_WEBHOOK_SECRET") {
		t.Errorf("New without a secret: %v", err)
	}
	if _, err := ingest.New(ingest.Config{WebhookSecret: "s"}, nil, nil, nil); err == nil {
		t.Error("New without JetStream: no error")
	}
	reg := prometheus.NewRegistry()
	if _, err := ingest.New(ingest.Config{WebhookSecret: "s"}, js, nil, reg); err != nil {
		t.Fatal(err)
	}
	if _, err := ingest.New(ingest.Config{WebhookSecret: "s"}, js, nil, reg); err == nil {
		t.Error("registering the metrics twice on one registry: no error")
	}
}

// counterValue sums the counters of family name whose labels include labels.
func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	var sum float64
	for _, m := range family(t, reg, name) {
		if hasLabels(m, labels) {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func histogramCount(t testing.TB, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	return histogramCountWith(t, reg, name, nil)
}

func histogramCountWith(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) uint64 {
	t.Helper()
	var n uint64
	for _, m := range family(t, reg, name) {
		if hasLabels(m, labels) {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

func family(t testing.TB, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()
		}
	}
	return nil
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// TestKindLabelIsBounded: rows of 5000 random kinds do not make 5000 series:
// the first 100 kinds get a label of their own, the rest count as ~other,
// and every event is still counted.
func TestKindLabelIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const kinds = 5000
	for i := range kinds {
		// UPDATEs are counted per kind like INSERTs and publish nothing,
		// which keeps the test quick.
		kind := fmt.Sprintf("k%d_%s", i, strings.ReplaceAll(newUUID(t)[:8], "-", ""))
		reply(t, b.post(t, rawEvent(newUUID(t), "UPDATE", rawRow(newUUID(t), kind, `{}`))), http.StatusOK)
	}
	reply(t, b.post(t, rawEvent(newUUID(t), "INSERT", rawRow(newUUID(t), "late_kind", `{}`))), http.StatusOK)
	families, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, f := range families {
		if f.GetName() == "effects_ingested_total" {
			series = len(f.GetMetric())
		}
	}
	if series > 102 {
		t.Errorf("effects_ingested_total has %d series for %d kinds, want at most 102", series, kinds+1)
	}
	if got := counterValue(t, b.reg, "effects_ingested_total", map[string]string{"kind": "~other", "outcome": "ignored"}); got != kinds-100 {
		t.Errorf("~other ignored = %v, want %d", got, kinds-100)
	}
	if got := counterValue(t, b.reg, "effects_ingested_total", map[string]string{"kind": "~other", "outcome": "published"}); got != 1 {
		t.Errorf("~other published = %v, want 1", got)
	}
}

// TestKindsAllowList: with EFFECTS_KINDS set, a row of another kind is
// failed at once with the reason, instead of waiting out the stream's
// retention with no one to handle it.
func TestKindsAllowList(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *ingest.Config) { c.Kinds = []string{"send_email", "http_request"} })

	got := reply(t, b.post(t, rawEvent(newUUID(t), "INSERT", rawRow(newUUID(t), "send_email", `{}`))), http.StatusOK)
	if got["duplicate"] != false {
		t.Fatalf("allowed kind: %v", got)
	}
	rowID := newUUID(t)
	got = reply(t, b.post(t, rawEvent(newUUID(t), "INSERT", rawRow(rowID, "sms", `{}`))), http.StatusOK)
	const reason = `kind "sms" is not handled here: EFFECTS_KINDS allows send_email, http_request`
	if got["rejected"] != reason {
		t.Fatalf("reply %v, want rejected with %q", got, reason)
	}
	c, err := effects.ParseCompletion(b.lastMsg(t, effects.CompletedStream, "effects.completed.sms").Data)
	if err != nil {
		t.Fatal(err)
	}
	if c.EffectID != rowID || c.Status != effects.StatusFailed || c.Error == nil || *c.Error != reason {
		t.Errorf("completion %+v", c)
	}
	if n := b.count(t, effects.EffectsStream); n != 1 {
		t.Errorf("%d effects stored, want 1", n)
	}
}
