package reconcile_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/reconcile"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// TestRecoversRowsNobodyDelivered: rows no ingest ever published (the
// webhook's, published_at NULL), a row from before the table source
// (published_at -infinity) and rows the table source published whose
// messages were then purged from the stream are all published again by one
// pass and end succeeded, each handled once; a row younger than
// EFFECTS_RECONCILE_AFTER is left alone.
func TestRecoversRowsNobodyDelivered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	lost := b.insert(t, "echo", 4, 3*h)
	old := b.insert(t, "echo", 1, 3*h)
	if _, err := b.pool.Exec(testCtx(t), `UPDATE effects SET published_at = '-infinity' WHERE id = $1`, old[0]); err != nil {
		t.Fatal(err)
	}
	purged := b.insert(t, "echo", 2, 3*h)
	b.publish(t, "echo", purged...)
	if _, err := b.pool.Exec(testCtx(t), `UPDATE effects SET published_at = now() - interval '2 hours' WHERE id = ANY($1::uuid[])`, purged); err != nil {
		t.Fatal(err)
	}
	s, err := b.js.Stream(testCtx(t), effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	young := b.insert(t, "echo", 1, time.Minute)
	b.startServices(t, nil, nil)

	res, err := b.rc.RunPass(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	all := append(append(append([]string{}, lost...), old...), purged...)
	if res.Republished != len(all) || res.Rejected != 0 || len(res.Skipped) != 0 {
		t.Fatalf("pass: %+v, want %d republished and nothing else", res, len(all))
	}
	b.waitStatus(t, "succeeded", all...)
	for _, id := range all {
		if n := b.callsOf(id); n != 1 {
			t.Errorf("%s handled %d times, want 1", id, n)
		}
		var eventID string
		if err := b.pool.QueryRow(testCtx(t), `SELECT completion->>'event_id' FROM effects WHERE id = $1`, id).Scan(&eventID); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(eventID, reconcile.MsgIDPrefix+id+":") {
			t.Errorf("%s was delivered with message id %q, want the reconciler's", id, eventID)
		}
	}
	if got := b.status(t, young[0]); got != "pending" || b.callsOf(young[0]) != 0 {
		t.Errorf("the young row is %s, handled %d times: want pending, untouched", got, b.callsOf(young[0]))
	}
	if got := testenv.MetricValue(t, b.reg, "effects_reconciler_republished_total", "kind", "echo"); got != float64(len(all)) {
		t.Errorf("effects_reconciler_republished_total{kind=echo} = %v, want %d", got, len(all))
	}
	// Done: the next pass finds nothing.
	if res, err := b.rc.RunPass(testCtx(t)); err != nil || res.Republished != 0 {
		t.Fatalf("second pass: %+v, %v", res, err)
	}
}

// TestBacklogIsNotRepublished: a kind whose handler is blocked with more
// effects waiting than it runs at once has old pending rows, but their
// effects are in JetStream: the pass leaves every one of them alone (and
// says why), while it recovers a lost row of an idle kind. Once unblocked,
// each slow row is handled exactly once.
func TestBacklogIsNotRepublished(t *testing.T) {
	t.Parallel()
	b := setup(t)
	slow := make(chan struct{})
	started := make(chan string, 1)
	b.startServices(t, slow, started)
	slowIDs := b.insert(t, "slow", 6, 3*h)
	b.publish(t, "slow", slowIDs...)
	<-started
	lost := b.insert(t, "echo", 1, 2*h)

	res, err := b.rc.RunPass(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if res.Republished != 1 || res.Skipped[reconcile.SkipBacklog] == 0 {
		t.Fatalf("pass: %+v, want the echo row republished and the slow rows skipped for their backlog", res)
	}
	if got := testenv.MetricValue(t, b.reg, "effects_reconciler_skipped_total", "kind", "slow", "reason", reconcile.SkipBacklog); got == 0 {
		t.Error("effects_reconciler_skipped_total{kind=slow,reason=backlog} is 0")
	}
	if got := testenv.MetricValue(t, b.reg, "effects_reconciler_republished_total", "kind", "slow"); got != 0 {
		t.Errorf("effects_reconciler_republished_total{kind=slow} = %v, want 0", got)
	}
	b.waitStatus(t, "succeeded", lost...)
	info := b.consumerInfo(t, effects.EffectsStream, dispatcher.ConsumerName("slow"))
	if info.NumPending+uint64(info.NumAckPending) == 0 {
		t.Fatal("the slow kind's backlog is gone before the handler was unblocked")
	}
	close(slow)
	b.waitStatus(t, "succeeded", slowIDs...)
	for _, id := range append(slowIDs, lost...) {
		if n := b.callsOf(id); n != 1 {
			t.Errorf("%s handled %d times, want 1", id, n)
		}
	}
}

// TestRetryWaitingIsNotRepublished: an old row whose effect failed once and
// waits an hour for its retry (nak'ed with a delay) is in flight, not lost:
// the pass leaves it alone.
func TestRetryWaitingIsNotRepublished(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startServices(t, nil, nil)
	id := b.insert(t, "flaky", 1, 3*h)[0]
	b.publish(t, "flaky", id)
	testenv.WaitFor(t, time.Minute, "the first attempt retried", func() bool {
		return testenv.MetricValue(t, b.dreg, "effects_handled_total", "kind", "flaky", "outcome", "retried") == 1
	})
	res, err := b.rc.RunPass(testCtx(t))
	if err != nil || res.Republished != 0 || res.Skipped[reconcile.SkipBacklog] != 1 {
		t.Fatalf("pass: %+v, %v; want the row skipped for its kind's backlog", res, err)
	}
	if n := b.callsOf(id); n != 1 || b.status(t, id) != "pending" {
		t.Fatalf("handled %d times, status %s; want once, pending", n, b.status(t, id))
	}
}

// lostKind makes a dispatcher consumer for kind "lost" with nothing to run
// it: what the reconciler publishes for it stays in the stream.
func lostKind(t *testing.T, b *bundle) {
	t.Helper()
	_, err := b.js.CreateOrUpdateConsumer(testCtx(t), effects.EffectsStream, jetstream.ConsumerConfig{
		Durable: dispatcher.ConsumerName("lost"), FilterSubject: effects.Subject("lost"), AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
}

func lastMsgID(t *testing.T, b *bundle, kind string) string {
	t.Helper()
	s, err := b.js.Stream(testCtx(t), effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(testCtx(t), effects.Subject(kind))
	if err != nil {
		t.Fatal(err)
	}
	return m.Header.Get(jetstream.MsgIDHeader)
}

// TestRepublishedAtMostOncePerAfter: a row published again and lost again
// (the stream purged) is not published a second time until
// EFFECTS_RECONCILE_AFTER has passed since; then it is, with a message id of
// its own.
func TestRepublishedAtMostOncePerAfter(t *testing.T) {
	t.Parallel()
	b := setup(t)
	lostKind(t, b)
	id := b.insert(t, "lost", 1, 3*h)[0]
	res, err := b.rc.RunPass(testCtx(t))
	if err != nil || res.Republished != 1 {
		t.Fatalf("first pass: %+v, %v", res, err)
	}
	first := lastMsgID(t, b, "lost")
	if want := reconcile.MsgIDPrefix + id + ":0"; first != want {
		t.Fatalf("message id %q, want %q", first, want)
	}
	s, err := b.js.Stream(testCtx(t), effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	res, err = b.rc.RunPass(testCtx(t))
	if err != nil || res.Republished != 0 || len(res.Skipped) != 0 {
		t.Fatalf("pass right after: %+v, %v; want the row left alone (published less than EFFECTS_RECONCILE_AFTER ago)", res, err)
	}
	// EFFECTS_RECONCILE_AFTER passes.
	var prev time.Time
	if err := b.pool.QueryRow(testCtx(t), `UPDATE effects SET published_at = published_at - interval '2 hours' WHERE id = $1 RETURNING published_at`, id).Scan(&prev); err != nil {
		t.Fatal(err)
	}
	res, err = b.rc.RunPass(testCtx(t))
	if err != nil || res.Republished != 1 {
		t.Fatalf("pass after EFFECTS_RECONCILE_AFTER: %+v, %v", res, err)
	}
	if second, want := lastMsgID(t, b, "lost"), reconcile.MsgIDPrefix+id+":"+strconv.FormatInt(prev.UnixMicro(), 10); second != want {
		t.Fatalf("second message id %q, want %q", second, want)
	}
}

// TestReplicasPublishEachRowOnce: two replicas' passes at once publish each
// row once between them.
func TestReplicasPublishEachRowOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	lostKind(t, b)
	ids := b.insert(t, "lost", 20, 3*h)
	other := b.reconciler(t, prometheus.NewRegistry())
	var wg sync.WaitGroup
	var results [2]reconcile.PassResult
	for i, rc := range []*reconcile.Reconciler{b.rc, other} {
		wg.Go(func() {
			res, err := rc.RunPass(testCtx(t))
			if err != nil {
				t.Error(err)
			}
			results[i] = res
		})
	}
	wg.Wait()
	if n := results[0].Republished + results[1].Republished; n != len(ids) {
		t.Fatalf("replicas republished %d rows between them (%+v), want %d", n, results, len(ids))
	}
	s, err := b.js.Stream(testCtx(t), effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(len(ids)) {
		t.Fatalf("%d messages in the stream, want %d", info.State.Msgs, len(ids))
	}
}

// TestNoConsumerIsLeftAlone: without a dispatcher consumer for the kind, the
// rows are not published (a dispatcher created later reads the stream from
// its start, where their effects may be).
func TestNoConsumerIsLeftAlone(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.insert(t, "nobody", 2, 3*h)
	res, err := b.rc.RunPass(testCtx(t))
	if err != nil || res.Republished != 0 || res.Skipped[reconcile.SkipNoConsumer] != 2 {
		t.Fatalf("pass: %+v, %v; want 2 rows skipped for no_consumer", res, err)
	}
}

// TestRowThatCanNeverBeHandledIsFailed: an old pending row with an invalid
// kind gets a failed completion naming the reason, as the ingest would
// have given it.
func TestRowThatCanNeverBeHandledIsFailed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startServices(t, nil, nil)
	id := b.insert(t, "Not A Kind", 1, 3*h)[0]
	res, err := b.rc.RunPass(testCtx(t))
	if err != nil || res.Rejected != 1 || res.Republished != 0 {
		t.Fatalf("pass: %+v, %v", res, err)
	}
	b.waitStatus(t, "failed", id)
	var msg string
	if err := b.pool.QueryRow(testCtx(t), `SELECT error FROM effects WHERE id = $1`, id).Scan(&msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "kind is not valid") {
		t.Fatalf("error %q", msg)
	}
}

// TestRowWithAnUnusableCreatedAtIsFailed: rows whose created_at no effect
// message can carry are failed with the reason, one by one; before, the
// first '-infinity' (it sorts first) failed the claim of every pass.
func TestRowWithAnUnusableCreatedAtIsFailed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startServices(t, nil, nil)
	var bad []string
	for _, at := range []string{"-infinity", "0044-03-15 BC"} {
		var id string
		if err := b.pool.QueryRow(testCtx(t), `INSERT INTO effects (kind, payload, created_at) VALUES ('lost', '{}', $1::timestamptz)
			RETURNING id::text`, at).Scan(&id); err != nil {
			t.Fatal(err)
		}
		bad = append(bad, id)
	}
	res, err := b.rc.RunPass(testCtx(t))
	if err != nil || res.Rejected != 2 {
		t.Fatalf("pass: %+v, %v; want both rows rejected", res, err)
	}
	b.waitStatus(t, "failed", bad...)
	for _, id := range bad {
		var msg string
		if err := b.pool.QueryRow(testCtx(t), `SELECT error FROM effects WHERE id = $1`, id).Scan(&msg); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(msg, "cannot be carried by an effect message") {
			t.Errorf("error %q", msg)
		}
	}
}

// TestZeroTurnsItOff: EFFECTS_RECONCILE_AFTER=0 runs no pass: Run returns
// at once, without waiting for its context.
func TestZeroTurnsItOff(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rc, err := reconcile.New(reconcile.Config{Table: "effects"}, b.pool, b.js, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]time.Duration{"": reconcile.DefaultAfter, "0": 0, "30m": 30 * time.Minute, "1s": time.Second} {
		env := map[string]string{}
		if v != "" {
			env["EFFECTS_RECONCILE_AFTER"] = v
		}
		c, err := reconcile.ConfigFromEnv(envconfig.FromMap(env), "effects")
		if err != nil || c.After != want || c.Enabled() != (want > 0) {
			t.Errorf("%q: %+v, %v; want After %s", v, c, err, want)
		}
	}
	for _, v := range []string{"15", "-1m", "500ms", "soon"} {
		_, err := reconcile.ConfigFromEnv(envconfig.FromMap(map[string]string{"EFFECTS_RECONCILE_AFTER": v}), "effects")
		if err == nil || !strings.Contains(err.Error(), "EFFECTS_RECONCILE_AFTER") {
			t.Errorf("%q: %v, want an error naming EFFECTS_RECONCILE_AFTER", v, err)
		}
	}
}

// While a table source runs (it holds the table source lock), rows its
// cursor has not passed are its backlog, which it publishes itself: the
// reconciler re-publishes only the rows the cursor passed. With no table
// source running, the backlog is the reconciler's, and a row it publishes
// carries published_at, which a table source starting later skips.
func TestLeavesTheTableSourceBacklog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testCtx(t)
	passed := b.insert(t, "echo", 2, 3*h)
	// The cursor as a table source leaves it after publishing those rows.
	if _, err := b.pool.Exec(ctx, `INSERT INTO effects_cursor (name, base) VALUES ('table_source', pg_current_snapshot())`); err != nil {
		t.Fatal(err)
	}
	backlog := b.insert(t, "echo", 2, 3*h)
	owner, err := b.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Exec(ctx, `SELECT pg_advisory_lock($1::int8 | 'effects'::regclass::oid::int8)`, ingest.SourceLockKeyHigh); err != nil {
		t.Fatal(err)
	}
	b.startServices(t, nil, nil)

	res, err := b.rc.RunPass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Republished != len(passed) {
		t.Fatalf("pass with a table source running: %+v, want the %d rows its cursor passed", res, len(passed))
	}
	b.waitStatus(t, "succeeded", passed...)
	for _, id := range backlog {
		if got := b.status(t, id); got != "pending" || b.callsOf(id) != 0 {
			t.Errorf("backlog row %s is %s, handled %d times: want it left to the table source", id, got, b.callsOf(id))
		}
	}

	// The table source goes.
	if _, err := owner.Exec(ctx, `SELECT pg_advisory_unlock($1::int8 | 'effects'::regclass::oid::int8)`, ingest.SourceLockKeyHigh); err != nil {
		t.Fatal(err)
	}
	owner.Release()
	res, err = b.rc.RunPass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Republished != len(backlog) {
		t.Fatalf("pass with no table source: %+v, want its %d backlog rows", res, len(backlog))
	}
	b.waitStatus(t, "succeeded", backlog...)
	var marked int
	if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM effects WHERE id = ANY($1::uuid[]) AND published_at IS NOT NULL`, backlog).Scan(&marked); err != nil || marked != len(backlog) {
		t.Fatalf("%d of the backlog rows carry published_at (%v), want all", marked, err)
	}
}

// TestCancelledIsNeverRepublished: a cancelled row (effects cancel) is
// final: however old, and whatever its kind's consumer, the reconciler
// leaves it alone, while a pending row beside it is published again.
func TestCancelledIsNeverRepublished(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.startServices(t, nil, nil)
	ids := b.insert(t, "echo", 2, 3*h)
	if _, err := b.pool.Exec(testCtx(t), `UPDATE effects SET status = 'cancelled', cancelled_at = now(), completed_at = now() WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	res, err := b.rc.RunPass(testCtx(t))
	if err != nil || res.Republished != 1 {
		t.Fatalf("pass: %+v, %v; want the pending row alone republished", res, err)
	}
	b.waitStatus(t, "succeeded", ids[1])
	if n := b.callsOf(ids[0]); n != 0 || b.status(t, ids[0]) != "cancelled" {
		t.Fatalf("the cancelled row ran %d times and is %s", n, b.status(t, ids[0]))
	}
}
