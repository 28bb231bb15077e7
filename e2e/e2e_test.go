// Package e2e runs the ingest, the dispatcher and the completer together
// against real PostgreSQL and JetStream, feeding them the way Hasura does.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestPipelineEndToEnd(t *testing.T) {
	// A web service the http_request handler may call.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"received": true}`))
	}))
	defer api.Close()
	apiURL, _ := url.Parse(api.URL)

	var counted atomic.Int32
	var rerunFixed atomic.Bool
	asyncDone := make(chan effects.Done, 1)

	reg := effects.NewRegistry()
	hcfg, err := handlers.ConfigFromEnv(nil)
	if err != nil {
		t.Fatal(err)
	}
	hcfg.HTTP.Allow = []string{apiURL.Host}
	if err := handlers.Register(reg, hcfg); err != nil {
		t.Fatal(err)
	}
	reg.Handle("count", func(_ context.Context, e effects.Effect) (any, error) {
		counted.Add(1)
		return map[string]int{"n": int(counted.Load())}, nil
	})
	reg.Handle("always_fails", func(context.Context, effects.Effect) (any, error) {
		return nil, errors.New("upstream returned 503")
	})
	reg.Handle("invalid_input", func(context.Context, effects.Effect) (any, error) {
		return nil, effects.Permanent(errors.New("payload has no RATESET"))
	})
	reg.Handle("rerun", func(context.Context, effects.Effect) (any, error) {
		if !rerunFixed.Load() {
			return nil, effects.Permanent(errors.New("storage bucket missing"))
		}
		return "uploaded", nil
	})
	reg.Handle("send_email", func(_ context.Context, e effects.Effect) (any, error) {
		return map[string]any{"sent": true}, nil
	})
	reg.HandleAsync("publish_rateset", func(_ context.Context, e effects.Effect, done effects.Done) error {
		asyncDone <- done
		return nil
	})

	p := startPipeline(t, options{
		registry: reg,
		dispatcher: dispatcher.Config{
			Concurrency: 16, MaxAttempts: 3, RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
			HandlerTimeout: 5 * time.Second, ShutdownTimeout: 2 * time.Second,
		},
	})

	t.Run("echo succeeds with its payload as completion", func(t *testing.T) {
		id, row := p.insert("echo", `{"to": "ops@example.com", "n": 12345678901234567890}`)
		_, body := p.event("INSERT", row)
		if r := p.post(body); r.Code != 200 || r.EffectID != id || r.Duplicate {
			t.Fatalf("reply %+v", r)
		}
		got := p.settled(id)
		if got.Status != "succeeded" || got.Attempts != 1 || got.Error != nil || got.CompletedAt == nil {
			t.Fatalf("row %+v", got)
		}
		// jsonb keeps numbers exactly; so must every hop on the way.
		var c map[string]any
		dec := json.NewDecoder(strings.NewReader(string(got.Completion)))
		dec.UseNumber()
		if err := dec.Decode(&c); err != nil || c["n"] != json.Number("12345678901234567890") || c["to"] != "ops@example.com" {
			t.Fatalf("completion %s", got.Completion)
		}
	})

	t.Run("a duplicate delivery completes the row once", func(t *testing.T) {
		before := counted.Load()
		id, row := p.insert("count", `{}`)
		_, body := p.event("INSERT", row)
		if r := p.post(body); r.Code != 200 || r.Duplicate {
			t.Fatalf("first reply %+v", r)
		}
		if r := p.post(body); r.Code != 200 || !r.Duplicate {
			t.Fatalf("second reply %+v", r)
		}
		got := p.settled(id)
		if got.Status != "succeeded" || got.Attempts != 1 {
			t.Fatalf("row %+v", got)
		}
		time.Sleep(300 * time.Millisecond) // room for a second run to show
		if n := counted.Load() - before; n != 1 {
			t.Fatalf("handler ran %d times", n)
		}
	})

	t.Run("a kind that keeps failing is retried then failed", func(t *testing.T) {
		id, row := p.insert("always_fails", `{}`)
		_, body := p.event("INSERT", row)
		p.post(body)
		got := p.settled(id)
		if got.Status != "failed" || got.Attempts != 3 || got.Error == nil || *got.Error != "upstream returned 503" {
			t.Fatalf("row %+v", got)
		}
	})

	t.Run("a permanent failure stops after one attempt", func(t *testing.T) {
		id, row := p.insert("invalid_input", `{}`)
		_, body := p.event("INSERT", row)
		p.post(body)
		got := p.settled(id)
		if got.Status != "failed" || got.Attempts != 1 || *got.Error != "payload has no RATESET" {
			t.Fatalf("row %+v", got)
		}
	})

	t.Run("a MANUAL re-run of a failed row ends succeeded", func(t *testing.T) {
		id, row := p.insert("rerun", `{"RATESET": 7}`)
		_, body := p.event("INSERT", row)
		p.post(body)
		if got := p.settled(id); got.Status != "failed" {
			t.Fatalf("row %+v", got)
		}
		rerunFixed.Store(true)
		_, manual := p.event("MANUAL", p.rowJSON(id)) // a new event id, the failed row
		if r := p.post(manual); r.Code != 200 || r.Duplicate {
			t.Fatalf("manual reply %+v", r)
		}
		p.waitFor(20*time.Second, "re-run to succeed", func() bool { return p.row(id).Status == "succeeded" })
		got := p.row(id)
		if string(got.Completion) != `"uploaded"` || got.Error != nil {
			t.Fatalf("row %+v", got)
		}
	})

	t.Run("http_request to a host not allowed fails with a clear error", func(t *testing.T) {
		id, row := p.insert("http_request", `{"url": "http://169.254.169.254/latest/meta-data/"}`)
		_, body := p.event("INSERT", row)
		p.post(body)
		got := p.settled(id)
		if got.Status != "failed" || got.Attempts != 1 || got.Error == nil ||
			!strings.Contains(*got.Error, `"169.254.169.254"`) || !strings.Contains(*got.Error, "EFFECTS_HTTP_ALLOW") {
			t.Fatalf("row %+v", got)
		}
	})

	t.Run("http_request to an allowed host succeeds", func(t *testing.T) {
		id, row := p.insert("http_request", `{"url": "`+api.URL+`/hook", "body": {"hello": "world"}}`)
		_, body := p.event("INSERT", row)
		p.post(body)
		got := p.settled(id)
		if got.Status != "succeeded" || string(got.Completion) != `{"body": {"received": true}, "status": 200}` {
			t.Fatalf("row %+v completion %s", got, got.Completion)
		}
	})

	t.Run("an invalid kind fails the row with the reason", func(t *testing.T) {
		id, row := p.insert("not.a.kind", `{}`)
		_, body := p.event("INSERT", row)
		if r := p.post(body); r.Code != 200 || r.Rejected == "" {
			t.Fatalf("reply %+v", r)
		}
		got := p.settled(id)
		if got.Status != "failed" || got.Error == nil || !strings.Contains(*got.Error, "not.a.kind") {
			t.Fatalf("row %+v", got)
		}
	})

	t.Run("UPDATE and DELETE events are ignored", func(t *testing.T) {
		id, row := p.insert("count", `{}`)
		_, upd := p.event("UPDATE", row)
		if r := p.post(upd); r.Code != 200 || !r.Ignored {
			t.Fatalf("reply %+v", r)
		}
		_, del := p.event("DELETE", row)
		if r := p.post(del); r.Code != 200 || !r.Ignored {
			t.Fatalf("reply %+v", r)
		}
		time.Sleep(300 * time.Millisecond)
		if got := p.row(id); got.Status != "pending" {
			t.Fatalf("row %+v", got)
		}
	})

	t.Run("Hasura fixtures", func(t *testing.T) {
		// The fixtures' rows, as the table would hold them.
		p.insertWithID("0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11", "publish_rateset", `{"RATESET": 4512}`)
		p.insertWithID("6b0e2c1a-9f8d-4e7c-a6b5-c4d3e2f1a0b9", "send_email",
			`{"to": "ops@example.com", "subject": "nightly report", "body": "attached"}`)

		// v2 INSERT through GraphQL, async handler: pending until the worker
		// completes it.
		if r := p.post(fixture(t, "insert.json")); r.Code != 200 || r.EffectID != "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11" {
			t.Fatalf("insert.json reply %+v", r)
		}
		var done effects.Done
		select {
		case done = <-asyncDone:
		case <-time.After(20 * time.Second):
			t.Fatal("async handler not called")
		}
		if got := p.row("0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11"); got.Status != "pending" {
			t.Fatalf("async row before completion %+v", got)
		}
		if err := done.Fail(context.Background(), errors.New("rateset 4512 upload: 503 from storage")); err != nil {
			t.Fatal(err)
		}
		got := p.settled("0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11")
		if got.Status != "failed" || *got.Error != "rateset 4512 upload: 503 from storage" {
			t.Fatalf("row %+v", got)
		}

		// The console's MANUAL re-run of that failed row (a new event id).
		if r := p.post(fixture(t, "manual.json")); r.Code != 200 || r.Duplicate {
			t.Fatalf("manual.json reply %+v", r)
		}
		select {
		case done = <-asyncDone:
		case <-time.After(20 * time.Second):
			t.Fatal("async handler not called for the re-run")
		}
		if err := done.Complete(context.Background(), map[string]any{"published": 4512}); err != nil {
			t.Fatal(err)
		}
		p.waitFor(20*time.Second, "re-run to succeed", func() bool {
			return p.row("0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11").Status == "succeeded"
		})

		// v1-style body written by plain SQL.
		if r := p.post(fixture(t, "insert-v1-sql-write.json")); r.Code != 200 {
			t.Fatalf("v1 reply %+v", r)
		}
		if got := p.settled("6b0e2c1a-9f8d-4e7c-a6b5-c4d3e2f1a0b9"); got.Status != "succeeded" || string(got.Completion) != `{"sent": true}` {
			t.Fatalf("row %+v", got)
		}

		// UPDATE written by SQL: ignored.
		if r := p.post(fixture(t, "update.json")); r.Code != 200 || !r.Ignored {
			t.Fatalf("update.json reply %+v", r)
		}
	})

	t.Run("bad requests are refused and change nothing", func(t *testing.T) {
		if r := p.post([]byte(`{"not": "an event"}`)); r.Code != 400 || r.Error == "" {
			t.Fatalf("reply %+v", r)
		}
		if r := p.post([]byte(`not json`)); r.Code != 400 {
			t.Fatalf("reply %+v", r)
		}
		var pending int
		if err := p.pg.Pool.QueryRow(context.Background(), `SELECT count(*) FROM effects WHERE status = 'pending'`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		if pending != 1 { // the row of the UPDATE/DELETE case
			t.Fatalf("%d rows pending", pending)
		}
	})
}
