package control_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

func (e *env) cancel(by string, ids ...string) control.Report {
	e.t.Helper()
	rep, err := e.ctl.Cancel(context.Background(), ids, by)
	if err != nil {
		e.t.Fatal(err)
	}
	return rep
}

func (e *env) cancelOK(by string, ids ...string) control.Report {
	e.t.Helper()
	rep := e.cancel(by, ids...)
	if !rep.OK() {
		e.t.Fatalf("cancel %v: %+v", ids, rep)
	}
	return rep
}

// A pending effect cancelled before any dispatcher saw it is never run:
// the dispatcher that gets it acks it unrun.
func TestCancelPendingNeverRuns(t *testing.T) {
	e := setup(t)
	id := e.insert("mail")
	rep := e.cancelOK("alice", id)
	r := rep.Results[0]
	if r.Outcome != control.OutcomeCancelled || r.Status != "pending" || r.Kind != "mail" || *r.By != "alice" || r.At == nil {
		t.Fatalf("cancel result %+v", r)
	}
	row := e.row(id)
	if row.Status != "cancelled" || *row.CancelledBy != "alice" || !row.CancelledAt.Equal(*r.At) || !row.CompletedAt.Equal(*row.CancelledAt) {
		t.Fatalf("row %+v", row)
	}
	// Cancelling again changes nothing and says so.
	if rep := e.cancelOK("bob", id); rep.Results[0].Outcome != control.OutcomeAlreadyCancelled || *rep.Results[0].By != "alice" {
		t.Fatalf("second cancel %+v", rep.Results[0])
	}

	p := e.dispatcher(e.registry("mail", "other"))
	testenv.WaitFor(t, time.Minute, "the cancelled effect settled", func() bool {
		return p.metric(t, "effects_handled_total", "kind", "mail", "outcome", "cancelled") == 1
	})
	e.assertHeldBack(nil, "other")
	if n := e.runs.count(id); n != 0 {
		t.Fatalf("the cancelled effect ran %d times", n)
	}
	if row := e.row(id); row.Status != "cancelled" {
		t.Fatalf("row %+v", row)
	}
}

// An effect waiting for its retry (a nak with a delay) is not run again
// once cancelled.
func TestCancelWaitingForRetry(t *testing.T) {
	e := setup(t)
	reg := effects.NewRegistry()
	reg.Handle("mail", func(ctx context.Context, eff effects.Effect) (any, error) {
		e.runs.started(eff.ID)
		return nil, effects.RetryAfter(2*time.Second, errors.New("busy"))
	})
	p := e.dispatcher(reg)
	id := e.insert("mail")
	testenv.WaitFor(t, time.Minute, "the first attempt", func() bool {
		return p.metric(t, "effects_handled_total", "kind", "mail", "outcome", "retried") == 1
	})
	e.cancelOK("", id)
	testenv.WaitFor(t, time.Minute, "the redelivery settled as cancelled", func() bool {
		return p.metric(t, "effects_handled_total", "kind", "mail", "outcome", "cancelled") == 1
	})
	if n := e.runs.count(id); n != 1 {
		t.Fatalf("the handler ran %d times, want once (before the cancel)", n)
	}
	if row := e.row(id); row.Status != "cancelled" {
		t.Fatalf("row %+v", row)
	}
}

// A running effect's handler has its context cancelled by the time the
// cancel returns; what it returns is not recorded, the row stays
// cancelled, and it is not retried. A completion published afterwards
// (a late one) does not change the row either.
func TestCancelRunning(t *testing.T) {
	e := setup(t)
	started := make(chan struct{})
	causes := make(chan error, 1)
	reg := effects.NewRegistry()
	reg.Handle("mail", func(ctx context.Context, eff effects.Effect) (any, error) {
		e.runs.started(eff.ID)
		close(started)
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return map[string]bool{"sent": true}, nil // as if it finished anyway
	}, effects.AttemptTimeout(time.Minute))
	cfg := testConfig()
	cfg.AckWait = 0 // the attempt timeout's own
	p := e.dispatcherWith(cfg, reg)
	id := e.insert("mail")
	<-started
	e.cancelOK("alice", id)
	select {
	case cause := <-causes:
		if cause == nil || !strings.Contains(cause.Error(), "cancelled by an operator") {
			t.Fatalf("the handler's context ended with %v", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the running handler's context was not cancelled")
	}
	testenv.WaitFor(t, time.Minute, "the attempt settled as cancelled", func() bool {
		return p.metric(t, "effects_handled_total", "kind", "mail", "outcome", "cancelled") == 1
	})
	if v := p.metric(t, "effects_handled_total", "kind", "mail", "outcome", "succeeded"); v != 0 {
		t.Fatalf("succeeded = %v: the cancelled attempt's result was published", v)
	}

	// A late completion, as from an attempt that ran elsewhere.
	client := effects.NewClient(e.js)
	if err := client.For(effects.Ref{ID: id, Kind: "mail", EventID: id}).Complete(context.Background(), map[string]bool{"late": true}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, time.Minute, "the late completion skipped", func() bool {
		return testenv.MetricValue(t, e.reg, "effects_completions_skipped_total", "reason", "cancelled") == 1
	})
	row := e.row(id)
	if row.Status != "cancelled" || row.Completion != nil || e.runs.count(id) != 1 {
		t.Fatalf("row %+v, ran %d times; want cancelled, no completion, run once", row, e.runs.count(id))
	}
}

// A held async effect is let go when cancelled.
func TestCancelHeldAsync(t *testing.T) {
	e := setup(t)
	reg := effects.NewRegistry()
	reg.HandleAsync("render", func(ctx context.Context, eff effects.Effect, done effects.Done) error {
		e.runs.started(eff.ID)
		return nil // the work goes on elsewhere
	})
	p := e.dispatcher(reg)
	id := e.insert("render")
	testenv.WaitFor(t, time.Minute, "the effect held", func() bool {
		return p.metric(t, "effects_async_held", "kind", "render") == 1
	})
	e.cancelOK("", id)
	testenv.WaitFor(t, time.Minute, "the held effect let go", func() bool {
		return p.metric(t, "effects_async_held", "kind", "render") == 0 &&
			p.metric(t, "effects_handled_total", "kind", "render", "outcome", "cancelled") == 1
	})
	// Its completion, when the work ends, changes nothing.
	if err := effects.NewClient(e.js).For(effects.Ref{ID: id, Kind: "render", EventID: id}).Complete(context.Background(), "done"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, time.Minute, "the completion skipped", func() bool {
		return testenv.MetricValue(t, e.reg, "effects_completions_skipped_total", "reason", "cancelled") == 1
	})
	if row := e.row(id); row.Status != "cancelled" {
		t.Fatalf("row %+v", row)
	}
}

// Succeeded and failed effects are refused with their status and left as
// they are; an unknown id is reported; a malformed one changes nothing.
func TestCancelRefusesFinalAndUnknown(t *testing.T) {
	e := setup(t)
	e.dispatcher(e.registry("mail"))
	done := e.insert("mail")
	e.waitStatus(done, "succeeded")
	var failed string
	if err := e.pg.Pool.QueryRow(context.Background(), `INSERT INTO effects (kind, status, error, completed_at) VALUES ('mail', 'failed', 'boom', now()) RETURNING id::text`).Scan(&failed); err != nil {
		t.Fatal(err)
	}
	unknown := "6f1c2a3b-0000-4000-8000-000000000001"
	before := map[string]row{done: e.row(done), failed: e.row(failed)}

	rep := e.cancel("alice", done, failed, unknown)
	if rep.OK() {
		t.Fatalf("report OK: %+v", rep)
	}
	want := map[string]string{done: "it is succeeded", failed: "it is failed", unknown: "no effect " + unknown}
	for _, r := range rep.Results {
		if !strings.Contains(r.Error, want[r.ID]) || r.Outcome.OK() {
			t.Errorf("result %+v; want an error saying %q", r, want[r.ID])
		}
	}
	for id, b := range before {
		if a := e.row(id); a.Status != b.Status || a.CancelledAt != nil || a.CancelledBy != nil {
			t.Errorf("row %s changed: %+v → %+v", id, b, a)
		}
	}
	if _, err := e.ctl.Cancel(context.Background(), []string{done, "not-an-id"}, ""); !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("a malformed id: %v", err)
	}
}

// The promise with several dispatchers at work: once a cancel returns, no
// dispatcher starts the effect's handler. Three dispatchers run a stream of
// effects while a test goroutine cancels pending ones in small batches; no
// handler of a cancelled effect started after its cancel returned.
func TestCancelNeverRunsAfterItReturns(t *testing.T) {
	e := setup(t)
	reg := effects.NewRegistry()
	reg.Handle("mail", func(ctx context.Context, eff effects.Effect) (any, error) {
		e.runs.started(eff.ID)
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
		return "sent", nil
	})
	cfg := testConfig()
	cfg.Concurrency = 2
	for range 3 {
		e.dispatcherWith(cfg, reg)
	}
	// A control waits until a new bucket is controlkv.StaleAfter old; one
	// now, so that the cancels below find the effects still pending.
	e.resumeOK("", "warm_up")
	const n = 400
	ids := make([]string, 0, n)
	for range n {
		ids = append(ids, e.insert("mail"))
	}
	returned := map[string]time.Time{}
	var mu sync.Mutex
	var cancels sync.WaitGroup
	for w := range 2 {
		cancels.Go(func() {
			rng := rand.New(rand.NewPCG(1, uint64(w)))
			for i := n/10 - 1 - w; i >= 0; i -= 2 { // the newest first: still pending
				var batch []string
				for _, id := range ids[i*10 : i*10+10] {
					if rng.IntN(2) == 0 {
						batch = append(batch, id)
					}
				}
				if len(batch) == 0 {
					continue
				}
				rep, err := e.ctl.Cancel(context.Background(), batch, "")
				at := time.Now()
				if err != nil || !rep.Confirmed {
					t.Errorf("cancel: %v %+v", err, rep)
					return
				}
				mu.Lock()
				for _, r := range rep.Results {
					if r.Outcome == control.OutcomeCancelled {
						returned[r.ID] = at
					}
				}
				mu.Unlock()
			}
		})
	}
	cancels.Wait()
	testenv.WaitFor(t, 2*time.Minute, "every effect final", func() bool {
		var pending int
		_ = e.pg.Pool.QueryRow(context.Background(), `SELECT count(*) FROM effects WHERE status = 'pending'`).Scan(&pending)
		return pending == 0
	})
	if len(returned) == 0 {
		t.Fatal("no effect was cancelled while pending")
	}
	for id, at := range returned {
		for _, s := range e.runs.startsOf(id) {
			if s.After(at) {
				t.Errorf("effect %s started %s after its cancel returned", id, s.Sub(at))
			}
		}
		if r := e.row(id); r.Status != "cancelled" {
			t.Errorf("effect %s is %s", id, r.Status)
		}
	}
	ran := 0
	for id := range returned {
		if e.runs.count(id) > 0 {
			ran++ // it was running when cancelled
		}
	}
	t.Logf("%d of %d effects cancelled while pending, %d of them while running", len(returned), n, ran)
}

// Retention removes cancelled rows by EFFECTS_RETAIN_CANCELLED, measured
// from the cancel, and leaves them with the other statuses' settings.
func TestRetentionOfCancelledRows(t *testing.T) {
	e := setup(t)
	id := e.insert("mail")
	e.cancelOK("", id)
	ctx := context.Background()
	res, err := retention.Pass(ctx, e.pg.Pool, e.table, retention.Policy{Succeeded: time.Microsecond, Failed: time.Microsecond}, retention.PassOptions{})
	if err != nil || res.Removed.Total() != 0 {
		t.Fatalf("a pass without EFFECTS_RETAIN_CANCELLED removed %+v, %v", res.Removed, err)
	}
	res, err = retention.Pass(ctx, e.pg.Pool, e.table, retention.Policy{Cancelled: time.Microsecond}, retention.PassOptions{})
	if err != nil || res.Removed != (retention.Counts{Cancelled: 1}) {
		t.Fatalf("pass removed %+v, %v; want the cancelled row", res.Removed, err)
	}
}
