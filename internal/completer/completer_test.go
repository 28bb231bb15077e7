package completer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

func TestWritesCompletionAndMeasuresEndToEnd(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	id := b.insert(t, "echo")
	at := time.Now().UTC().Truncate(time.Microsecond)
	b.publish(t, succeeded(id, at, `{"ok": true}`))

	testenv.WaitFor(t, 30*time.Second, "row succeeded", func() bool { return b.row(t, id).Status == "succeeded" })
	r := b.row(t, id)
	if r.Completion != `{"ok": true}` || r.Error != "<null>" || r.Attempts != 1 || !r.CompletedAt.Equal(at) {
		t.Fatalf("row: %+v", r)
	}
	info := b.waitSettled(t)
	if info.NumRedelivered != 0 {
		t.Errorf("redelivered %d", info.NumRedelivered)
	}
	if got := b.metric(t, "effects_completions_written_total", "status", "succeeded"); got != 1 {
		t.Errorf("written{succeeded} = %v", got)
	}
	if got := b.metric(t, "effects_end_to_end_seconds", "kind", "echo"); got != 1 {
		t.Errorf("end_to_end{kind=echo} count = %v", got)
	}
	if sum := histogramSum(t, b, "effects_end_to_end_seconds"); sum <= 0 || sum > 60 {
		t.Errorf("end_to_end sum = %vs, want the few ms from insert to write", sum)
	}
	cfg := info.Config
	if cfg.Durable != completer.ConsumerName || cfg.FilterSubject != effects.CompletedSubjects ||
		cfg.AckPolicy != jetstream.AckExplicitPolicy || cfg.AckWait != 30*time.Second ||
		cfg.DeliverPolicy != jetstream.DeliverAllPolicy || cfg.MaxAckPending < 10*completer.DefaultBatchSize {
		t.Errorf("consumer config: %+v", cfg)
	}
	if got := b.metric(t, "effects_completer_batch_size"); got < 1 {
		t.Errorf("batch_size count = %v", got)
	}
	if got := b.metric(t, "effects_completer_write_seconds"); got < 1 {
		t.Errorf("write_seconds count = %v", got)
	}
	if err := b.c.CheckPostgres(ctx(t)); err != nil {
		t.Errorf("CheckPostgres: %v", err)
	}
	if err := b.c.CheckConsuming(ctx(t)); err != nil {
		t.Errorf("CheckConsuming: %v", err)
	}
}

func TestSucceededNeverChanges(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	id := b.insert(t, "echo")
	t0 := time.Now().UTC()
	b.publish(t, succeeded(id, t0, `"first"`))
	testenv.WaitFor(t, 30*time.Second, "row succeeded", func() bool { return b.row(t, id).Status == "succeeded" })
	before := b.row(t, id)

	b.publish(t,
		failed(id, t0.Add(time.Hour), "later failure", 3),
		succeeded(id, t0.Add(time.Hour), `"second"`),
	)
	b.waitSettled(t)
	if after := b.row(t, id); after != before || after.Completion != `"first"` {
		t.Fatalf("succeeded row changed:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := b.metric(t, "effects_completions_skipped_total", "reason", "unchanged"); got != 2 {
		t.Errorf("skipped{unchanged} = %v, want 2", got)
	}
	if got := b.metric(t, "effects_completions_written_total"); got != 1 {
		t.Errorf("written = %v, want 1", got)
	}
}

func TestDuplicateChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	id := b.insert(t, "echo")
	dup := failed(id, time.Now().UTC(), "boom", 5)
	b.publish(t, dup)
	testenv.WaitFor(t, 30*time.Second, "row failed", func() bool { return b.row(t, id).Status == "failed" })
	b.waitSettled(t)
	before := b.row(t, id)

	b.publish(t, dup, dup)
	b.waitSettled(t)
	after := b.row(t, id)
	// Not even a new row version (xmin) is written for a duplicate.
	if after != before {
		t.Fatalf("duplicate changed the row:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := b.metric(t, "effects_completions_skipped_total", "reason", "unchanged"); got != 2 {
		t.Errorf("skipped{unchanged} = %v, want 2", got)
	}
}

func TestSucceededReplacesFailed(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	id := b.insert(t, "echo")
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	b.publish(t, failed(id, t0, "gave up", 5))
	testenv.WaitFor(t, 30*time.Second, "row failed", func() bool { return b.row(t, id).Status == "failed" })

	// A re-run's success replaces the failure, even with an earlier
	// completed_at (the effect did happen).
	b.publish(t, succeeded(id, t0.Add(-time.Minute), `{"rerun": 1}`))
	testenv.WaitFor(t, 30*time.Second, "row succeeded", func() bool { return b.row(t, id).Status == "succeeded" })
	r := b.row(t, id)
	if r.Error != "<null>" || r.Attempts != 1 || r.Completion != `{"rerun": 1}` || !r.CompletedAt.Equal(t0.Add(-time.Minute)) {
		t.Fatalf("row after re-run: %+v", r)
	}
	if got := b.metric(t, "effects_completions_written_total", "status", "failed"); got != 1 {
		t.Errorf("written{failed} = %v", got)
	}
	// The row is visible once the write commits; the metric counts it
	// just after.
	testenv.WaitFor(t, 10*time.Second, "written{succeeded} = 1", func() bool {
		return b.metric(t, "effects_completions_written_total", "status", "succeeded") == 1
	})
}

func TestOlderFailedDoesNotReplaceNewerFailed(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	id := b.insert(t, "echo")
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	b.publish(t, failed(id, t0, "newer", 3))
	testenv.WaitFor(t, 30*time.Second, "row failed", func() bool { return b.row(t, id).Status == "failed" })

	b.publish(t, failed(id, t0.Add(-time.Second), "older", 2))
	b.waitSettled(t)
	if r := b.row(t, id); r.Error != "newer" || r.Attempts != 3 {
		t.Fatalf("older failure replaced a newer one: %+v", r)
	}

	b.publish(t, failed(id, t0.Add(time.Second), "newest", 4))
	testenv.WaitFor(t, 30*time.Second, "newest failure written", func() bool { return b.row(t, id).Error == "newest" })
	if r := b.row(t, id); r.Attempts != 4 || !r.CompletedAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("row: %+v", r)
	}
}

func TestSeveralCompletionsOfOneIDInOneBatch(t *testing.T) {
	t.Parallel()
	// Lingering makes the completions published before the start one batch.
	b := setup(t, setupOpts{noStart: true, cfg: completer.Config{Linger: 500 * time.Millisecond, LingerFrom: 1, Writers: 1}})
	a, c, d := b.insert(t, "echo"), b.insert(t, "echo"), b.insert(t, "echo")
	t0 := time.Now().UTC().Truncate(time.Microsecond)
	b.publish(t,
		// a: the first success wins over failures around it and a later
		// success.
		failed(a, t0, "a1", 1),
		succeeded(a, t0.Add(time.Second), `"a-first"`),
		succeeded(a, t0.Add(2*time.Second), `"a-second"`),
		failed(a, t0.Add(3*time.Second), "a2", 2),
		// c: the latest failure wins; on a tie the later message.
		failed(c, t0.Add(2*time.Second), "c-latest", 2),
		failed(c, t0, "c-older", 1),
		failed(c, t0.Add(2*time.Second), "c-latest-again", 3),
		// d: alone.
		succeeded(d, t0, `"d"`),
	)
	b.start(t)
	b.waitSettled(t)

	if r := b.row(t, a); r.Status != "succeeded" || r.Completion != `"a-first"` {
		t.Errorf("a: %+v", r)
	}
	if r := b.row(t, c); r.Status != "failed" || r.Error != "c-latest-again" || r.Attempts != 3 {
		t.Errorf("c: %+v", r)
	}
	if r := b.row(t, d); r.Status != "succeeded" {
		t.Errorf("d: %+v", r)
	}
	if got := b.metric(t, "effects_completer_batch_size"); got != 1 {
		t.Errorf("%v batches, want the 8 completions in 1", got)
	}
	if got := b.metric(t, "effects_completions_written_total"); got != 3 {
		t.Errorf("written = %v, want 3", got)
	}
	if got := b.metric(t, "effects_completions_skipped_total", "reason", "unchanged"); got != 5 {
		t.Errorf("skipped{unchanged} = %v, want 5", got)
	}
}

func TestUnknownEffectIsAckedAndCounted(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	known := b.insert(t, "echo")
	b.publish(t, succeeded(newID(), time.Now(), `1`), succeeded(known, time.Now(), `2`))
	info := b.waitSettled(t)
	if info.NumRedelivered != 0 {
		t.Errorf("redelivered %d", info.NumRedelivered)
	}
	if got := b.metric(t, "effects_completions_skipped_total", "reason", "unknown_effect"); got != 1 {
		t.Errorf("skipped{unknown_effect} = %v", got)
	}
	if b.row(t, known).Status != "succeeded" {
		t.Error("the known row was not written")
	}
}

func TestMalformedIsTerminatedAndCounted(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{noStart: true, cfg: completer.Config{AckWait: time.Second}})
	advisories, err := b.nc.SubscribeSync("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED." + effects.CompletedStream + "." + completer.ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	b.start(t)
	subject := effects.CompletedSubject("echo")
	b.publishRaw(t, subject, []byte(`not json`))
	b.publishRaw(t, subject, []byte(`{"effect_id": "nope", "status": "succeeded", "completed_at": "2025-01-01T00:00:00Z"}`))
	b.publishRaw(t, subject, []byte(`{"effect_id": "`+newID()+`", "status": "done", "completed_at": "2025-01-01T00:00:00Z"}`))
	b.waitSettled(t)
	if got := b.metric(t, "effects_completions_skipped_total", "reason", "malformed"); got != 3 {
		t.Errorf("skipped{malformed} = %v, want 3", got)
	}
	for i := 0; i < 3; i++ {
		msg, err := advisories.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("termination advisory %d: %v", i, err)
		}
		var adv struct {
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal(msg.Data, &adv); err != nil || !strings.Contains(adv.Reason, "malformed completion") {
			t.Errorf("advisory reason %q (%v)", adv.Reason, err)
		}
	}
	// Terminated messages are not delivered again, even after AckWait.
	time.Sleep(2 * time.Second)
	if info := b.consumerInfo(t); info.NumRedelivered != 0 || info.NumAckPending != 0 {
		t.Errorf("after AckWait: redelivered %d, ack pending %d", info.NumRedelivered, info.NumAckPending)
	}
}

func TestValueRefusedByPostgresIsIsolated(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{noStart: true, cfg: completer.Config{Linger: 500 * time.Millisecond, LingerFrom: 1}})
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, b.insert(t, "echo"))
	}
	now := time.Now()
	// Valid JSON that jsonb refuses (it cannot hold U+0000).
	bad := succeeded(ids[2], now, `{"s": "\u0000"}`)
	b.publish(t, succeeded(ids[0], now, `0`), succeeded(ids[1], now, `1`), bad, succeeded(ids[3], now, `3`),
		failed(ids[4], now, "nul \x00 in the error is kept", 1))
	b.start(t)
	b.waitSettled(t)
	for i, id := range ids {
		want := "succeeded"
		switch i {
		case 2, 4:
			want = "failed"
		}
		if r := b.row(t, id); r.Status != want {
			t.Errorf("row %d: %+v, want %s", i, r, want)
		}
	}
	if r := b.row(t, ids[4]); !strings.HasPrefix(r.Error, "nul ") {
		t.Errorf("error text: %q", r.Error)
	}
	if r := b.row(t, ids[2]); r.Completion != "<null>" || !strings.Contains(r.Error, "PostgreSQL refused it") {
		t.Errorf("refused completion: %+v", r)
	}
	if got := b.metric(t, "effects_completions_written_total"); got != 5 {
		t.Errorf("written = %v, want 5", got)
	}
}

// TestCompletionPostgresRefusesFailsTheRow: a completion whose value jsonb
// refuses is not dropped: the row is failed with the reason, completion
// NULL, for each kind of value PostgreSQL cannot store.
func TestCompletionPostgresRefusesFailsTheRow(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{noStart: true})
	now := time.Now().UTC().Format(time.RFC3339Nano)
	cases := []struct {
		name, completion, wantInError string
	}{
		{"NUL in a string", `{"s": "a\u0000b"}`, "refused"},
		{"number beyond numeric", `{"n": 1e1000000}`, "refused"},
		{"invalid UTF-8", "{\"s\": \"\xff\xfe\"}", "refused"},
	}
	ids := make([]string, len(cases))
	for i, c := range cases {
		ids[i] = b.insert(t, "echo")
		data := fmt.Sprintf(`{"effect_id":%q,"kind":"echo","status":"succeeded","completion":%s,"error":null,"attempts":1,"completed_at":%q}`,
			ids[i], c.completion, now)
		b.publishRaw(t, effects.CompletedSubject("echo"), []byte(data))
	}
	b.start(t)
	b.waitSettled(t)
	for i, c := range cases {
		r := b.row(t, ids[i])
		if r.Status != "failed" || r.Completion != "<null>" || !strings.Contains(r.Error, c.wantInError) ||
			!utf8.ValidString(r.Error) || r.Attempts != 1 {
			t.Errorf("%s: row %+v, want failed, completion NULL, error naming the refusal", c.name, r)
		}
	}
	if got := b.metric(t, "effects_completions_written_total", "status", "failed"); got != float64(len(cases)) {
		t.Errorf("written{failed} = %v, want %d", got, len(cases))
	}
}

func TestSchemaQualifiedTable(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	b := setup(t, setupOpts{pool: pg.Pool, cfg: completer.Config{Table: pg.Schema + ".Outbox"}})
	id := b.insert(t, "echo")
	b.publish(t, succeeded(id, time.Now(), `true`))
	testenv.WaitFor(t, 30*time.Second, "row succeeded", func() bool { return b.row(t, id).Status == "succeeded" })
}

func TestMissingTableRefusesToStart(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	c, err := completer.New(completer.Config{Table: "nothing_here"}, pg.Pool, js, testLogger(t), newRegistry())
	if err != nil {
		t.Fatal(err)
	}
	err = c.Run(ctx(t))
	if !isNotMigrated(err) || !strings.Contains(err.Error(), "completer migrate") {
		t.Fatalf("Run without a table: %v", err)
	}
}

func TestStopKeepsDurableConsumer(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	testenv.WaitFor(t, 30*time.Second, "consuming", func() bool { return b.c.CheckConsuming(ctx(t)) == nil })
	if err := b.stopAndWait(t, 30*time.Second); err != nil {
		t.Fatalf("Run after stop: %v", err)
	}
	// Completions published while no completer runs wait in the durable
	// consumer and are written by the next one.
	id := b.insert(t, "echo")
	b.publish(t, succeeded(id, time.Now(), `1`))
	info := b.consumerInfo(t)
	if info.Config.Durable != completer.ConsumerName || info.NumPending != 1 {
		t.Fatalf("consumer after stop: durable %q, pending %d", info.Config.Durable, info.NumPending)
	}
	b.start(t)
	testenv.WaitFor(t, 30*time.Second, "row succeeded", func() bool { return b.row(t, id).Status == "succeeded" })
}

func TestWaitsForNATSAtStart(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{noStart: true, cfg: completer.Config{RetryMax: 200 * time.Millisecond}})
	b.nats.Shutdown()
	testenv.WaitFor(t, 10*time.Second, "client disconnected", func() bool { return b.nc.Status() != nats.CONNECTED })
	b.start(t)
	time.Sleep(500 * time.Millisecond) // a few failed attempts
	if err := b.c.CheckConsuming(ctx(t)); err == nil {
		t.Fatal("consuming while NATS is down")
	}
	b.nats.Restart(t)
	testenv.WaitFor(t, 30*time.Second, "consuming", func() bool { return b.c.CheckConsuming(ctx(t)) == nil })
	id := b.insert(t, "echo")
	b.publish(t, succeeded(id, time.Now(), `1`))
	testenv.WaitFor(t, 30*time.Second, "row succeeded", func() bool { return b.row(t, id).Status == "succeeded" })
}

func TestStopBeforeStartReturnsNil(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{noStart: true, cfg: completer.Config{RetryMax: 100 * time.Millisecond}})
	b.nats.Shutdown()
	b.start(t)
	time.Sleep(200 * time.Millisecond)
	if err := b.stopAndWait(t, 15*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	for _, tc := range []struct {
		cfg  completer.Config
		want string
	}{
		{completer.Config{Table: "a.b.c"}, "EFFECTS_TABLE"},
		{completer.Config{BatchSize: -1}, "EFFECTS_COMPLETER_BATCH_SIZE"},
		{completer.Config{AckWait: time.Millisecond}, "EFFECTS_COMPLETER_ACK_WAIT"},
	} {
		if _, err := completer.New(tc.cfg, pg.Pool, js, testLogger(t), newRegistry()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
	// Metrics registered twice on one registry are refused, not panicked on.
	reg := newRegistry()
	if _, err := completer.New(completer.Config{}, pg.Pool, js, testLogger(t), reg); err != nil {
		t.Fatal(err)
	}
	if _, err := completer.New(completer.Config{}, pg.Pool, js, testLogger(t), reg); err == nil {
		t.Error("second New on one registry succeeded")
	}
}

func TestRunsWithOthers(t *testing.T) {
	t.Parallel()
	// Two completers share the durable consumer and split the work; the
	// rows end the same.
	b := setup(t, setupOpts{cfg: completer.Config{BatchSize: 10}})
	second, err := completer.New(b.cfg, b.pool, b.js, testLogger(t), newRegistry())
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- second.Run(runCtx) }()
	defer func() { cancel(); <-done }()

	var ids []string
	for i := 0; i < 200; i++ {
		ids = append(ids, b.insert(t, "echo"))
	}
	now := time.Now()
	for _, id := range ids {
		b.publish(t, failed(id, now, "x", 1), succeeded(id, now, `1`))
	}
	b.waitSettled(t)
	var n int
	if err := b.pool.QueryRow(ctx(t), "SELECT count(*) FROM effects WHERE status = 'succeeded'").Scan(&n); err != nil || n != len(ids) {
		t.Fatalf("succeeded rows: %d (%v), want %d", n, err, len(ids))
	}
}

func TestStopWhileNATSDownIsPrompt(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	testenv.WaitFor(t, 30*time.Second, "consuming", func() bool { return b.c.CheckConsuming(ctx(t)) == nil })
	b.nats.Shutdown()
	testenv.WaitFor(t, 10*time.Second, "client disconnected", func() bool { return b.nc.Status() != nats.CONNECTED })
	start := time.Now()
	if err := b.stopAndWait(t, 20*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Not held for the 30s shutdown timeout by a drain that cannot finish.
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stop took %s", d)
	}
}

func histogramSum(t *testing.T, b *bundle, name string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return sum
}

func TestTableProblemKeepsCompletions(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{cfg: completer.Config{RetryMax: 100 * time.Millisecond}})
	id := b.insert(t, "echo")
	// A constraint someone added by hand refuses every success: the table
	// is wrong, not the completion, so it must not be dropped.
	if _, err := b.pool.Exec(ctx(t), `ALTER TABLE effects ADD CONSTRAINT no_success CHECK (status <> 'succeeded') NOT VALID`); err != nil {
		t.Fatal(err)
	}
	b.publish(t, succeeded(id, time.Now(), `1`))
	testenv.WaitFor(t, 30*time.Second, "failed writes", func() bool { return b.metric(t, "effects_completer_write_errors_total") >= 2 })
	if err := b.c.CheckPostgres(ctx(t)); err == nil || !strings.Contains(err.Error(), "no_success") {
		t.Errorf("CheckPostgres while writes fail: %v", err)
	}
	if got := b.metric(t, "effects_completions_skipped_total", "reason", "malformed"); got != 0 {
		t.Fatalf("a completion was terminated over a table problem")
	}
	if _, err := b.pool.Exec(ctx(t), `ALTER TABLE effects DROP CONSTRAINT no_success`); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "row succeeded", func() bool { return b.row(t, id).Status == "succeeded" })
	testenv.WaitFor(t, 10*time.Second, "ready", func() bool { return b.c.CheckPostgres(ctx(t)) == nil })
}
