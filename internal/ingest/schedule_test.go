package ingest_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// A row whose run_at is after its created_at is scheduled: the webhook
// replies 200 "scheduled" and publishes nothing (the completer's scheduler
// publishes it when due), however its time compares with the ingest's
// clock; an invalid run_at is a 400 naming the field.
func TestScheduledRowIsNotPublished(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, runAt := range []any{
		"2026-03-14T09:26:54+00:00",  // a second after created_at, long past by now
		"2099-01-01T00:00:00+00:00",  // far ahead
		"2099-01-01 00:00:00.5+00",   // PostgreSQL's text form
		"infinity",                   // never due
		"10000-01-01T00:00:00+00:00", // after any time an effect message can carry
	} {
		ev := newEvent(newUUID(t), newUUID(t), "send_email")
		ev.row()["run_at"] = runAt
		got := reply(t, b.post(t, ev.bytes()), http.StatusOK)
		if got["scheduled"] != true {
			t.Errorf("run_at %v: reply %v, want scheduled", runAt, got)
		}
	}
	b.expectNothingStored(t)
	if n := counterValue(t, b.reg, "effects_ingested_total", map[string]string{"kind": "send_email", "outcome": "scheduled"}); n != 5 {
		t.Errorf("effects_ingested_total{outcome=scheduled} %v, want 5", n)
	}

	ev := newEvent(newUUID(t), newUUID(t), "send_email")
	ev.row()["run_at"] = "next tuesday"
	if got := reply(t, b.post(t, ev.bytes()), http.StatusBadRequest); !strings.Contains(got["error"].(string), "event.data.new.run_at") {
		t.Errorf("reply %v, want an error naming event.data.new.run_at", got)
	}
	b.expectNothingStored(t)
}

// NULL, or a run_at not after created_at (the past, or now() itself), means
// now: the effect is published at once, without run_at in the message.
func TestRunAtNotAfterCreatedAtRunsNow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i, runAt := range []any{nil, "2026-03-14T09:26:53.589793+00:00", "2020-01-01T00:00:00Z", "-infinity"} {
		ev := newEvent(newUUID(t), newUUID(t), "send_email")
		ev.row()["run_at"] = runAt
		got := reply(t, b.post(t, ev.bytes()), http.StatusOK)
		if got["sequence"] != float64(i+1) {
			t.Fatalf("run_at %v: reply %v, want it published", runAt, got)
		}
		msg := b.lastMsg(t, effects.EffectsStream, "effects.send_email")
		if strings.Contains(string(msg.Data), "run_at") {
			t.Errorf("run_at %v: message %s carries run_at", runAt, msg.Data)
		}
	}
}

// A MANUAL re-run keeps the effect's time: of a row still waiting it
// publishes nothing; of a row that is due it runs now, carrying run_at.
func TestManualRerunOfAScheduledEffectKeepsItsTime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rowID := newUUID(t)
	ahead := time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano)
	ev := newEvent(newUUID(t), rowID, "send_email")
	ev.ev()["op"] = "MANUAL"
	ev.row()["run_at"] = ahead
	if got := reply(t, b.post(t, ev.bytes()), http.StatusOK); got["scheduled"] != true {
		t.Errorf("MANUAL of a waiting effect: reply %v, want scheduled", got)
	}
	b.expectNothingStored(t)

	due := "2026-03-14T10:00:00.25Z" // after created_at, before now
	ev = newEvent(newUUID(t), rowID, "send_email")
	ev.ev()["op"] = "MANUAL"
	ev.row()["run_at"] = due
	if got := reply(t, b.post(t, ev.bytes()), http.StatusOK); got["sequence"] != float64(1) {
		t.Fatalf("MANUAL of a due effect: reply %v, want it published", got)
	}
	msg := b.lastMsg(t, effects.EffectsStream, "effects.send_email")
	if !strings.HasSuffix(string(msg.Data), `,"run_at":"2026-03-14T10:00:00.25Z"}`) {
		t.Errorf("message %s, want run_at carried", msg.Data)
	}
	if id := msg.Header.Get(jetstream.MsgIDHeader); id != ev["id"] {
		t.Errorf("Nats-Msg-Id %q, want the MANUAL event's id", id)
	}
}

// The table source leaves scheduled rows (run_at after created_at) to the
// completer's scheduler: it publishes the rows around them, a row whose
// run_at is not after its created_at at once, and never the scheduled one,
// which is not in its backlog either.
func TestTableSourceLeavesScheduledRows(t *testing.T) {
	b := setupTable(t)
	var scheduled, past string
	if err := b.pool.QueryRow(t.Context(), `INSERT INTO effects (kind, run_at) VALUES ('send_email', now() + interval '1 hour') RETURNING id::text`).Scan(&scheduled); err != nil {
		t.Fatal(err)
	}
	if err := b.pool.QueryRow(t.Context(), `INSERT INTO effects (kind, run_at) VALUES ('send_email', now() - interval '1 hour') RETURNING id::text`).Scan(&past); err != nil {
		t.Fatal(err)
	}
	plain := b.insert("send_email", `{}`)
	src := b.startSource()
	b.waitPublished([]string{past, plain})
	testenv.WaitFor(t, 30*time.Second, "no backlog", func() bool { return testenv.MetricValue(t, src.reg, "effects_table_backlog") == 0 })
	var published bool
	if err := b.pool.QueryRow(t.Context(), `SELECT published_at IS NOT NULL FROM effects WHERE id = $1`, scheduled).Scan(&published); err != nil {
		t.Fatal(err)
	}
	ids := b.streamIDs()
	if published || ids[scheduled] != 0 || ids[past] != 1 || ids[plain] != 1 {
		t.Errorf("scheduled row published %v, stream ids %v; want only the other two, once each", published, ids)
	}
}
