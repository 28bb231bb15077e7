package ingest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// insertN inserts n rows of kind echo with payload.
func (b *tableBundle) insertN(n int, payload string) []string {
	b.t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = b.insert("echo", payload)
	}
	return ids
}

// checkStoredOnce fails unless every id is in the EFFECTS stream exactly
// once, and the stream holds nothing else.
func (b *tableBundle) checkStoredOnce(ids []string) {
	b.t.Helper()
	got := b.streamIDs()
	for _, id := range ids {
		if got[id] != 1 {
			b.t.Errorf("row %s stored %d times, want once", id, got[id])
		}
	}
	if len(got) != len(ids) {
		b.t.Errorf("the stream holds %d ids, want %d", len(got), len(ids))
	}
}

// rewindCursor puts the cursor back at the start, as if nothing had been
// published (a crash before every cursor write).
func (b *tableBundle) rewindCursor() {
	b.t.Helper()
	if _, err := b.pool.Exec(context.Background(), `UPDATE effects_cursor SET base = '1:1:', target = NULL, after_txid = NULL, after_id = NULL`); err != nil {
		b.t.Fatal(err)
	}
}

func (b *tableBundle) updateEffectsStream(f func(*jetstream.StreamConfig)) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := b.js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		b.t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	f(&cfg)
	if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
		b.t.Fatal(err)
	}
}

func fastRows(t *testing.T, src *source, result string) float64 {
	t.Helper()
	return testenv.MetricValue(t, src.reg, "effects_table_fast_batch_rows_total", "result", result)
}

// The batches go as fast batches: every row stored once, marked, and the
// acks of the fast batches confirmed them all.
func TestTableSourceFastBatch(t *testing.T) {
	b := setupTable(t)
	ids := b.insertN(120, `{"n": 1}`)
	src := b.startSource() // batches of 50
	b.waitPublished(ids)
	b.checkStoredOnce(ids)
	if got := fastRows(t, src, "stored"); got != 120 {
		t.Errorf("rows stored by fast batches: %v, want 120", got)
	}
	if got := fastRows(t, src, "fallback"); got != 0 {
		t.Errorf("rows fallen back: %v, want 0", got)
	}
	// Counted just after the cursor write that waitPublished saw.
	testenv.WaitFor(t, 10*time.Second, "120 rows counted published", func() bool {
		return testenv.MetricValue(t, src.reg, "effects_ingested_total", "outcome", "published") == 120
	})
}

// EFFECTS_TABLE_FAST_BATCH=false publishes message by message.
func TestTableSourceFastBatchOff(t *testing.T) {
	b := setupTable(t)
	ids := b.insertN(60, `{}`)
	src := b.startSource(func(c *ingest.TableConfig) { c.NoFastBatch = true })
	b.waitPublished(ids)
	b.checkStoredOnce(ids)
	if got := fastRows(t, src, "stored") + fastRows(t, src, "fallback"); got != 0 {
		t.Errorf("rows sent in fast batches: %v, want 0", got)
	}
}

// An effects stream made without allow_batched (before nats-server 2.14, or
// by hand) is published to message by message, all of it.
func TestTableSourceFastBatchNotAllowed(t *testing.T) {
	b := setupTable(t)
	ctx := context.Background()
	if _, err := b.js.CreateStream(ctx, effects.StreamConfigs(effects.StreamOptions{})[0]); err != nil {
		t.Fatal(err)
	}
	ids := b.insertN(80, `{}`)
	src := b.startSource()
	b.waitPublished(ids)
	b.checkStoredOnce(ids)
	if got := fastRows(t, src, "stored") + fastRows(t, src, "fallback"); got != 0 {
		t.Errorf("rows sent in fast batches: %v, want 0", got)
	}
}

// A stream that stops allowing fast batches while the source runs: the
// refused batch is published message by message, nothing lost.
func TestTableSourceFastBatchRefused(t *testing.T) {
	b := setupTable(t)
	first := b.insertN(10, `{}`)
	src := b.startSource()
	b.waitPublished(first)
	if fastRows(t, src, "stored") != 10 {
		t.Fatalf("fast batch not used: %v rows", fastRows(t, src, "stored"))
	}
	b.updateEffectsStream(func(c *jetstream.StreamConfig) { c.AllowBatchPublish = false })
	second := b.insertN(30, `{}`)
	b.waitPublished(second)
	b.checkStoredOnce(append(first, second...))
	if got := fastRows(t, src, "fallback"); got == 0 {
		t.Error("no row fell back")
	}
}

// Rows published again (a crash before the cursor write) are stored once:
// the server skips a duplicate inside a fast batch (first, middle or last)
// and counts it as stored, so the batch confirms it and the cursor moves.
func TestTableSourceFastBatchDuplicates(t *testing.T) {
	b := setupTable(t)
	ids := b.insertN(40, `{}`)
	src := b.startSource()
	b.waitPublished(ids)
	src.stop()
	ctx := context.Background()

	// As if the batch had not been marked: all published again, with a
	// new row before them, one among them and one after them.
	var early string
	if err := b.pool.QueryRow(ctx, `INSERT INTO effects (kind, payload, created_at) VALUES ('echo', '{}', now() - interval '1 hour') RETURNING id::text`).Scan(&early); err != nil {
		t.Fatal(err)
	}
	var middle string
	if err := b.pool.QueryRow(ctx, `INSERT INTO effects (kind, payload, created_at) SELECT 'echo', '{}', created_at FROM effects WHERE id = $1 RETURNING id::text`, ids[20]).Scan(&middle); err != nil {
		t.Fatal(err)
	}
	last := b.insert("echo", `{}`)
	b.rewindCursor()
	src = b.startSource()
	all := append([]string{early, middle, last}, ids...)
	b.waitPublished(all)
	b.checkStoredOnce(all)
	if got := fastRows(t, src, "stored"); got != 43 {
		t.Errorf("rows confirmed by fast batches: %v, want 43", got)
	}
	if got := fastRows(t, src, "fallback"); got != 0 {
		t.Errorf("rows fallen back: %v, want 0", got)
	}

	// Only duplicates, the first of them on its own.
	src.stop()
	b.rewindCursor()
	src = b.startSource()
	b.waitPublished(all)
	b.checkStoredOnce(all)
	if got := fastRows(t, src, "stored"); got != 43 {
		t.Errorf("duplicates confirmed by fast batches: %v, want 43", got)
	}
}

// A message the stream refuses in the middle of a fast batch (over its max
// message size): the rows before it are stored, the rows after it fall
// back and are stored, and it is failed with the reason (published on its
// own, the stream refuses it too): it cannot hold up the rows behind it in
// the cursor, and it is not in the stream.
func TestTableSourceFastBatchErrorMidBatch(t *testing.T) {
	b := setupTable(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, b.js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	b.updateEffectsStream(func(c *jetstream.StreamConfig) { c.MaxMsgSize = 1024 })
	before := b.insertN(10, `{}`)
	big := b.insert("echo", `{"x": "`+strings.Repeat("y", 2000)+`"}`)
	after := b.insertN(10, `{}`)
	src := b.startSource(func(c *ingest.TableConfig) { c.RetryMax = 50 * time.Millisecond })
	all := append(append(append([]string{}, before...), big), after...)
	b.waitPublished(all)
	b.checkStoredOnce(append(before, after...))
	if got := fastRows(t, src, "stored"); got < 10 {
		t.Errorf("rows confirmed by fast batches: %v, want the 10 before the big one at least", got)
	}
	if got := fastRows(t, src, "fallback"); got < 11 {
		t.Errorf("rows fallen back: %v, want the big one and the 10 after it", got)
	}
	cs, err := b.js.Stream(ctx, effects.CompletedStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := cs.GetLastMsgForSubject(ctx, effects.CompletedSubject("echo"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), big) || !strings.Contains(string(m.Data), "larger than the EFFECTS stream accepts") {
		t.Errorf("completion %s: want %s failed for its size", m.Data, big)
	}
	testenv.WaitFor(t, 10*time.Second, "1 row counted rejected", func() bool {
		return testenv.MetricValue(t, src.reg, "effects_ingested_total", "outcome", "rejected") == 1
	})
}

// The effects stream deleted under the source: the cursor does not pass a
// row that was not stored; once the stream is back, every row is
// published.
func TestTableSourceFastBatchStreamDeleted(t *testing.T) {
	b := setupTable(t)
	ctx := context.Background()
	src := b.startSource(func(c *ingest.TableConfig) { c.RetryMax = 50 * time.Millisecond; c.PublishTimeout = time.Second })
	first := b.insertN(10, `{}`)
	b.waitPublished(first)
	if err := b.js.DeleteStream(ctx, effects.EffectsStream); err != nil {
		t.Fatal(err)
	}
	second := b.insertN(20, `{}`)
	testenv.WaitFor(t, 30*time.Second, "a batch error", func() bool { return testenv.MetricValue(t, src.reg, "effects_table_batch_errors_total") > 0 })
	if marked := b.published(second); marked != 0 {
		t.Fatalf("the cursor passed %d rows with no stream", marked)
	}
	if err := effects.EnsureStreams(ctx, b.js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	b.waitPublished(second)
	b.checkStoredOnce(second)
}

// EFFECTS_TABLE_FAST_BATCH: on unless set false; a wrong value is named.
func TestTableConfigFastBatchSetting(t *testing.T) {
	for v, off := range map[string]bool{"": false, "true": false, "1": false, "false": true, "0": true} {
		env := map[string]string{"DATABASE_URL": "postgres://h/db"}
		if v != "" {
			env["EFFECTS_TABLE_FAST_BATCH"] = v
		}
		c, err := ingest.TableConfigFromEnv(envconfig.FromMap(env))
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if c.NoFastBatch != off {
			t.Errorf("EFFECTS_TABLE_FAST_BATCH=%q: NoFastBatch %v, want %v", v, c.NoFastBatch, off)
		}
	}
	_, err := ingest.TableConfigFromEnv(envconfig.FromMap(map[string]string{"DATABASE_URL": "postgres://h/db", "EFFECTS_TABLE_FAST_BATCH": "maybe"}))
	if err == nil || !strings.Contains(err.Error(), "EFFECTS_TABLE_FAST_BATCH") {
		t.Errorf("error %v, want one naming EFFECTS_TABLE_FAST_BATCH", err)
	}
}

// A row whose message is over NATS's max_payload (1 MiB) in the middle of a
// batch: the client refuses it before sending, the batch goes on without
// it, and the row is failed with the reason as before; the others are
// stored once.
func TestTableSourceFastBatchOverMaxPayload(t *testing.T) {
	b := setupTable(t)
	before := b.insertN(5, `{}`)
	big := b.insert("echo", `{"x": "`+strings.Repeat("y", 1100<<10)+`"}`)
	after := b.insertN(5, `{}`)
	src := b.startSource(func(c *ingest.TableConfig) { c.MaxPayloadBytes = 2 << 20 })
	b.waitPublished(append(append(before, big), after...))
	b.checkStoredOnce(append(before, after...))
	ctx := context.Background()
	cs, err := b.js.Stream(ctx, effects.CompletedStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := cs.GetLastMsgForSubject(ctx, effects.CompletedSubject("echo"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), big) || !strings.Contains(string(m.Data), "more than the NATS server accepts") {
		t.Errorf("completion %s: want %s failed for its size", m.Data, big)
	}
	if got := fastRows(t, src, "stored"); got != 10 {
		t.Errorf("rows confirmed by the fast batch: %v, want 10", got)
	}
	if got := fastRows(t, src, "fallback"); got != 1 {
		t.Errorf("rows fallen back: %v, want 1", got)
	}
}

// `batch publish too many inflight` (the server's limit of fast batches in
// flight per stream, which many replicas could reach): the refused batch
// is published message by message, all of it.
func TestTableSourceFastBatchTooManyInflight(t *testing.T) {
	pg := testenv.StartPostgres(t)
	b := &tableBundle{t: t, pg: pg, url: pg.URL, pool: pg.Pool}
	b.migrate()
	b.nats = testenv.StartNATSWith(t, func(o *server.Options) { o.JetStreamLimits.MaxBatchInflightPerStream = 1 })
	nc, js := b.nats.Connect(t)
	b.js = js
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// Another publisher's batch, started and left open, holds the one slot
	// (for the server's 10s batch timeout).
	const holder = "00000000-0000-4000-8000-000000000001"
	acks, err := nc.SubscribeSync("_INBOX.holder.>")
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(effects.Subject("echo"))
	m.Reply = "_INBOX.holder.b1.500.fail.1.0.$FI"
	m.Header.Set(jetstream.MsgIDHeader, holder)
	m.Data = []byte(`{}`)
	if err := nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	if a, err := acks.NextMsg(5 * time.Second); err != nil || !strings.Contains(string(a.Data), `"type":"ack"`) {
		t.Fatalf("the holder's batch did not start: %v %v", a, err)
	}

	ids := b.insertN(30, `{}`)
	src := b.startSource()
	b.waitPublished(ids)
	b.checkStoredOnce(append(ids, holder))
	if got := fastRows(t, src, "stored"); got != 0 {
		t.Errorf("rows confirmed by fast batches: %v, want 0 (the slot is taken)", got)
	}
	if got := fastRows(t, src, "fallback"); got != 30 {
		t.Errorf("rows fallen back: %v, want 30", got)
	}
}
