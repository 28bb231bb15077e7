package reconcile_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/reconcile"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// start is one handler start of a scheduled effect, as the handler saw it.
type start struct {
	at      time.Time // the handler's clock when it started
	runAt   time.Time // the message's run_at
	attempt int
	msgID   string
}

// schedServices are a completer with its scheduler and a dispatcher
// handling "timed" and "limited" (two starts a second across processes),
// both recording every start; stop ends them all, as a deploy would.
type schedServices struct {
	reg  *prometheus.Registry // the scheduler's and the completer's
	stop func()
}

type starts struct {
	mu sync.Mutex
	by map[string][]start
}

func (s *starts) record(e effects.Effect) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.by[e.ID] = append(s.by[e.ID], start{at: time.Now(), runAt: e.RunAt, attempt: e.Attempt, msgID: e.EventID})
}

func (s *starts) of(id string) []start {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.by[id])
}

func (b *bundle) startScheduled(t *testing.T, st *starts) *schedServices {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	s := &schedServices{reg: prometheus.NewRegistry()}
	c, err := completer.New(completer.Config{Table: "effects"}, b.pool, b.js, testLogger(t), s.reg)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := reconcile.NewScheduler(reconcile.ScheduleConfig{Table: "effects"}, b.pool, b.js, testLogger(t), s.reg)
	if err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	reg.Handle("timed", func(_ context.Context, e effects.Effect) (any, error) {
		st.record(e)
		return nil, nil
	})
	reg.Handle("limited", func(_ context.Context, e effects.Effect) (any, error) {
		st.record(e)
		return nil, nil
	}, effects.RateLimit(2, time.Second))
	d, err := dispatcher.New(dispatcher.Config{Concurrency: 4}, reg, b.js, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for name, run := range map[string]func(context.Context) error{"completer": c.Run, "scheduler": sc.Run, "dispatcher": d.Run} {
		wg.Go(func() {
			if err := run(ctx); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	s.stop = func() { cancel(); wg.Wait() }
	t.Cleanup(s.stop)
	for _, k := range []string{"timed", "limited"} {
		testenv.WaitFor(t, time.Minute, "consumer "+dispatcher.ConsumerName(k), func() bool {
			_, err := b.js.Consumer(testCtx(t), effects.EffectsStream, dispatcher.ConsumerName(k))
			return err == nil
		})
	}
	return s
}

// passes is how many scheduler passes of s are done.
func (s *schedServices) passes(t *testing.T) float64 {
	return testenv.MetricValue(t, s.reg, "effects_scheduler_passes_total", "result", "done")
}

// insertAt inserts a row of kind due at runAt (an SQL expression) and
// returns its id and run_at.
func (b *bundle) insertAt(t *testing.T, kind, runAt string) (string, time.Time) {
	t.Helper()
	var id string
	var at time.Time
	if err := b.pool.QueryRow(testCtx(t), `INSERT INTO effects (kind, payload, run_at) VALUES ($1, '{"n":1}', `+runAt+`)
		RETURNING id::text, run_at`, kind).Scan(&id, &at); err != nil {
		t.Fatal(err)
	}
	return id, at
}

// streamMsgs is how many messages of kind the effects stream holds.
func (b *bundle) streamMsgs(t *testing.T, kind string) uint64 {
	t.Helper()
	st, err := b.js.Stream(testCtx(t), effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(testCtx(t), jetstream.WithSubjectFilter(effects.Subject(kind)))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[effects.Subject(kind)]
}

// Effects due in a few seconds run neither before their run_at nor more
// than a few seconds after it (the scheduler polls every second), on their
// first attempt, carrying their run_at, published once as schedule:<id>:<run_at>; a
// scheduled effect whose time passed while nothing published it (the
// completer was down) runs at once.
func TestScheduledEffectsRunOnTime(t *testing.T) {
	b := setup(t)
	st := &starts{by: map[string][]start{}}
	var ids []string
	runAts := map[string]time.Time{}
	for _, in := range []string{"now() + interval '2 seconds'", "now() + interval '3 seconds'", "now() + interval '3 seconds'"} {
		id, at := b.insertAt(t, "timed", in)
		ids = append(ids, id)
		runAts[id] = at
	}
	var overdue string
	if err := b.pool.QueryRow(testCtx(t), `INSERT INTO effects (kind, created_at, run_at)
		VALUES ('timed', now() - interval '2 hours', now() - interval '1 hour') RETURNING id::text`).Scan(&overdue); err != nil {
		t.Fatal(err)
	}
	inserted := time.Now()
	b.startScheduled(t, st)
	b.waitStatus(t, "succeeded", append(ids, overdue)...)

	if got := st.of(overdue); len(got) != 1 || got[0].at.Sub(inserted) > 5*time.Second {
		t.Errorf("the overdue effect: starts %+v, want one within 5s of the start", got)
	}
	for _, id := range ids {
		got := st.of(id)
		if len(got) != 1 {
			t.Fatalf("%s started %d times, want once", id, len(got))
		}
		s, want := got[0], runAts[id]
		if s.at.Before(want) {
			t.Errorf("%s started at %s, before its run_at %s", id, s.at.Format(time.RFC3339Nano), want.Format(time.RFC3339Nano))
		}
		if late := s.at.Sub(want); late > 5*time.Second {
			t.Errorf("%s started %s after its run_at, want within 5s", id, late)
		}
		if !s.runAt.Equal(want) {
			t.Errorf("%s carried run_at %s, want %s", id, s.runAt, want)
		}
		if wantID := reconcile.ScheduleMsgID(id, want); s.attempt != 1 || s.msgID != wantID {
			t.Errorf("%s: attempt %d, message id %q; want 1 and %q", id, s.attempt, s.msgID, wantID)
		}
		var attempts int
		if err := b.pool.QueryRow(testCtx(t), `SELECT attempts FROM effects WHERE id = $1`, id).Scan(&attempts); err != nil {
			t.Fatal(err)
		}
		if attempts != 1 {
			t.Errorf("%s: the row says %d attempts, want 1: waiting is not an attempt", id, attempts)
		}
	}
}

// An effect due tomorrow is still pending, unpublished and unrun after the
// scheduler polled, after the dispatcher, the completer (with its
// scheduler) and the NATS server restarted, and nothing of it is in the
// stream meanwhile (no consumer, ours or another team's, can see it early);
// moved to now, it runs once, on its first attempt.
func TestWaitingEffectSurvivesRestarts(t *testing.T) {
	b := setup(t)
	st := &starts{by: map[string][]start{}}
	id, _ := b.insertAt(t, "timed", "now() + interval '1 day'")
	waitingUntouched := func(s *schedServices) {
		t.Helper()
		before := s.passes(t)
		testenv.WaitFor(t, time.Minute, "two scheduler passes", func() bool { return s.passes(t) >= before+2 })
		var status string
		var published bool
		if err := b.pool.QueryRow(testCtx(t), `SELECT status, published_at IS NOT NULL FROM effects WHERE id = $1`, id).Scan(&status, &published); err != nil {
			t.Fatal(err)
		}
		if status != "pending" || published || len(st.of(id)) != 0 || b.streamMsgs(t, "timed") != 0 {
			t.Fatalf("an effect due tomorrow: status %s, published %v, starts %d, messages in the stream %d; want pending, unpublished, none, none",
				status, published, len(st.of(id)), b.streamMsgs(t, "timed"))
		}
	}
	s := b.startScheduled(t, st)
	waitingUntouched(s)
	s.stop()
	b.nats.Restart(t)
	s = b.startScheduled(t, st)
	waitingUntouched(s)
	s.stop()
	s = b.startScheduled(t, st)
	waitingUntouched(s)
	if got := testenv.MetricValue(t, s.reg, "effects_scheduled_waiting"); got != 1 {
		t.Errorf("effects_scheduled_waiting %v, want 1", got)
	}

	// Tomorrow comes (moving run_at is also how a waiting effect is
	// rescheduled).
	if _, err := b.pool.Exec(testCtx(t), `UPDATE effects SET run_at = now() + interval '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	b.waitStatus(t, "succeeded", id)
	if got := st.of(id); len(got) != 1 || got[0].attempt != 1 {
		t.Errorf("starts %+v, want one, on attempt 1", got)
	}
}

// The reconciler does not take an effect waiting for its time for a lost
// one, however long ago it was inserted; it still publishes a lost row,
// and a scheduled row due long ago that nothing published.
func TestReconcilerLeavesWaitingEffectsAlone(t *testing.T) {
	b := setup(t) // reconciler: After 1h
	b.startServices(t, nil, nil)
	var waiting, lost, overdue string
	for _, x := range []struct {
		id  *string
		sql string
	}{
		{&waiting, `INSERT INTO effects (kind, created_at, run_at) VALUES ('echo', now() - interval '3 hours', now() + interval '1 hour') RETURNING id::text`},
		{&lost, `INSERT INTO effects (kind, created_at) VALUES ('echo', now() - interval '3 hours') RETURNING id::text`},
		{&overdue, `INSERT INTO effects (kind, created_at, run_at) VALUES ('echo', now() - interval '3 hours', now() - interval '2 hours') RETURNING id::text`},
	} {
		if err := b.pool.QueryRow(testCtx(t), x.sql).Scan(x.id); err != nil {
			t.Fatal(err)
		}
	}
	res, err := b.rc.RunPass(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if res.Republished != 2 {
		t.Errorf("republished %d, want 2 (the lost row and the overdue one)", res.Republished)
	}
	b.waitStatus(t, "succeeded", lost, overdue)
	var status string
	var published bool
	if err := b.pool.QueryRow(testCtx(t), `SELECT status, published_at IS NOT NULL FROM effects WHERE id = $1`, waiting).Scan(&status, &published); err != nil {
		t.Fatal(err)
	}
	if status != "pending" || published || b.callsOf(waiting) != 0 {
		t.Errorf("the waiting effect: status %s, published %v, calls %d; want it left alone", status, published, b.callsOf(waiting))
	}
}

// Scheduled effects that fall due together still start at the kind's rate
// (two a second), none before its run_at.
func TestScheduledEffectsKeepTheRateLimit(t *testing.T) {
	b := setup(t)
	st := &starts{by: map[string][]start{}}
	var ids []string
	var due time.Time
	if err := b.pool.QueryRow(testCtx(t), `SELECT now() + interval '2 seconds'`).Scan(&due); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		if err := b.pool.QueryRow(testCtx(t), `INSERT INTO effects (kind, run_at) VALUES ('limited', $1) RETURNING id::text`, due).Scan(new(string)); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := b.pool.Query(testCtx(t), `SELECT id::text FROM effects WHERE kind = 'limited'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		ids = append(ids, id)
	}
	b.startScheduled(t, st)
	b.waitStatus(t, "succeeded", ids...)
	var at []time.Time
	for _, id := range ids {
		for _, s := range st.of(id) {
			if s.at.Before(due) {
				t.Errorf("%s started at %s, before its run_at %s", id, s.at.Format(time.RFC3339Nano), due.Format(time.RFC3339Nano))
			}
			at = append(at, s.at)
		}
	}
	slices.SortFunc(at, time.Time.Compare)
	if len(at) != len(ids) {
		t.Fatalf("%d starts for %d effects", len(at), len(ids))
	}
	// n starts at 2/s take at least n-1 intervals of 500ms; unlimited, they
	// would all start at once. The span, not each gap, is what the limit
	// guarantees (a handler may start a little after its slot, under load);
	// 10% slack for that, as the dispatcher's own rate test allows.
	if span, want := at[len(at)-1].Sub(at[0]), time.Duration(len(at)-1)*500*time.Millisecond*9/10; span < want {
		t.Errorf("%d starts within %s, want at least %s at 2/s", len(at), span, want)
	}
}

// A scheduled row that can never run (its kind is not valid) is failed with
// the reason when due, not before.
func TestUnusableScheduledRowIsFailedWhenDue(t *testing.T) {
	b := setup(t)
	st := &starts{by: map[string][]start{}}
	id, runAt := b.insertAt(t, "not a kind", "now() + interval '2 seconds'")
	b.startScheduled(t, st)
	b.waitStatus(t, "failed", id)
	var msg string
	var completed time.Time
	if err := b.pool.QueryRow(testCtx(t), `SELECT error, completed_at FROM effects WHERE id = $1`, id).Scan(&msg, &completed); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "kind is not valid") || completed.Before(runAt) {
		t.Errorf("error %q completed at %s; want the kind's reason, not before %s", msg, completed, runAt)
	}
}

func TestScheduleConfigFromEnv(t *testing.T) {
	for _, c := range []struct {
		env  map[string]string
		want time.Duration
		err  string
	}{
		{env: map[string]string{}, want: time.Second},
		{env: map[string]string{"EFFECTS_SCHEDULE_INTERVAL": "250ms"}, want: 250 * time.Millisecond},
		{env: map[string]string{"EFFECTS_SCHEDULE_INTERVAL": "0"}, err: "EFFECTS_SCHEDULE_INTERVAL"},
		{env: map[string]string{"EFFECTS_SCHEDULE_INTERVAL": "2m"}, err: "EFFECTS_SCHEDULE_INTERVAL=2m0s: want 10ms to 1m"},
		{env: map[string]string{"EFFECTS_SCHEDULE_INTERVAL": "soon"}, err: "EFFECTS_SCHEDULE_INTERVAL"},
	} {
		cfg, err := reconcile.ScheduleConfigFromEnv(envconfig.FromMap(c.env), "effects")
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%v: error %v, want one with %q", c.env, err, c.err)
		case c.err == "" && err != nil:
			t.Errorf("%v: %v", c.env, err)
		case c.err == "" && cfg.WithDefaults().Interval != c.want:
			t.Errorf("%v: interval %s, want %s", c.env, cfg.WithDefaults().Interval, c.want)
		}
	}
}

// An effect that falls due while NATS is down is not lost: the scheduler's
// passes fail and leave the row unpublished, and it runs once NATS is back,
// once, on its first attempt.
func TestDueWhileNATSIsDown(t *testing.T) {
	b := setup(t)
	st := &starts{by: map[string][]start{}}
	s := b.startScheduled(t, st)
	b.nats.Shutdown()
	id, _ := b.insertAt(t, "timed", "now() + interval '1 second'")
	testenv.WaitFor(t, time.Minute, "a failed scheduler pass", func() bool {
		return testenv.MetricValue(t, s.reg, "effects_scheduler_passes_total", "result", "error") >= 1
	})
	var published bool
	if err := b.pool.QueryRow(testCtx(t), `SELECT published_at IS NOT NULL FROM effects WHERE id = $1`, id).Scan(&published); err != nil {
		t.Fatal(err)
	}
	if published {
		t.Fatal("the row is marked published while NATS is down")
	}
	// The gauges show it: one due effect, past its time.
	if due, age := testenv.MetricValue(t, s.reg, "effects_scheduled_due"), testenv.MetricValue(t, s.reg, "effects_scheduled_overdue_seconds"); due != 1 || age <= 0 {
		t.Errorf("effects_scheduled_due %v, effects_scheduled_overdue_seconds %v; want 1 and above 0", due, age)
	}
	b.nats.Start(t)
	b.waitStatus(t, "succeeded", id)
	if due := testenv.MetricValue(t, s.reg, "effects_scheduled_due"); due != 0 {
		t.Errorf("effects_scheduled_due %v once it ran, want 0", due)
	}
	if got := st.of(id); len(got) != 1 || got[0].attempt != 1 {
		t.Errorf("starts %+v, want one, on attempt 1", got)
	}
}

// A cancel (effects cancel) of a scheduled effect stops it: the row is
// cancelled, leaves the waiting index, and is never published or run, past
// its run_at too.
func TestCancelledScheduledEffectNeverRuns(t *testing.T) {
	b := setup(t)
	st := &starts{by: map[string][]start{}}
	s := b.startScheduled(t, st)
	id, _ := b.insertAt(t, "timed", "now() + interval '2 seconds'")
	ctl := control.New(b.pool, b.js, schema.Table{Name: "effects"}, control.Options{Wait: 30 * time.Second})
	if _, err := ctl.Cancel(testCtx(t), []string{id}, "test"); err != nil {
		t.Fatal(err)
	}
	// Past its run_at, and two more passes.
	testenv.WaitFor(t, time.Minute, "the run_at passed and two passes after it", func() bool {
		var passed bool
		_ = b.pool.QueryRow(testCtx(t), `SELECT run_at < now() - interval '1 second' FROM effects WHERE id = $1`, id).Scan(&passed)
		return passed
	})
	before := s.passes(t)
	testenv.WaitFor(t, time.Minute, "two scheduler passes", func() bool { return s.passes(t) >= before+2 })
	if b.status(t, id) != "cancelled" || len(st.of(id)) != 0 || b.streamMsgs(t, "timed") != 0 {
		t.Errorf("a cancelled scheduled effect: status %s, starts %d, messages %d; want cancelled, none, none",
			b.status(t, id), len(st.of(id)), b.streamMsgs(t, "timed"))
	}
}
