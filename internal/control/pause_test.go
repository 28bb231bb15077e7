package control_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// pauseOK pauses kinds and checks the report.
func (e *env) pauseOK(by string, kinds ...string) control.Report {
	e.t.Helper()
	rep, err := e.ctl.Pause(context.Background(), kinds, by)
	if err != nil {
		e.t.Fatal(err)
	}
	if !rep.OK() {
		e.t.Fatalf("pause %v: %+v", kinds, rep)
	}
	return rep
}

func (e *env) resumeOK(by string, kinds ...string) control.Report {
	e.t.Helper()
	rep, err := e.ctl.Resume(context.Background(), kinds, by)
	if err != nil {
		e.t.Fatal(err)
	}
	if !rep.OK() {
		e.t.Fatalf("resume %v: %+v", kinds, rep)
	}
	return rep
}

// assertHeldBack checks that the effects ids of a paused kind are pending
// and never ran, after the dispatchers ran effects of another kind
// inserted after them (so they had every chance to run them).
func (e *env) assertHeldBack(ids []string, other string) {
	e.t.Helper()
	probe := e.insert(other)
	e.waitStatus(probe, "succeeded")
	for _, id := range ids {
		if r := e.row(id); r.Status != "pending" || e.runs.count(id) != 0 {
			e.t.Fatalf("effect %s of a paused kind: status %s, ran %d times; want pending, never run", id, r.Status, e.runs.count(id))
		}
	}
}

// assertRanOnce waits for ids to succeed and checks each ran once.
func (e *env) assertRanOnce(ids []string) {
	e.t.Helper()
	for _, id := range ids {
		e.waitStatus(id, "succeeded")
		if n := e.runs.count(id); n != 1 {
			e.t.Fatalf("effect %s ran %d times, want once", id, n)
		}
	}
}

func TestPauseHoldsAcrossDispatchersUntilResumed(t *testing.T) {
	e := setup(t)
	a := e.dispatcher(e.registry("mail", "other"))
	b := e.dispatcher(e.registry("mail", "other"))

	rep := e.pauseOK("alice", "mail")
	if rep.Dispatchers != 2 || rep.Results[0].Outcome != control.OutcomePaused || *rep.Results[0].By != "alice" || rep.Results[0].At == nil {
		t.Fatalf("pause report %+v", rep)
	}
	for _, p := range []*disp{a, b} {
		if v := p.metric(t, "effects_kind_paused", "kind", "mail"); v != 1 {
			t.Fatalf("effects_kind_paused{kind=mail} = %v once the pause returned", v)
		}
		if v := p.metric(t, "effects_kind_paused", "kind", "other"); v != 0 {
			t.Fatalf("effects_kind_paused{kind=other} = %v", v)
		}
	}
	// Pausing again changes nothing and says so.
	if rep := e.pauseOK("bob", "mail"); rep.Results[0].Outcome != control.OutcomeAlreadyPaused || *rep.Results[0].By != "alice" {
		t.Fatalf("second pause: %+v", rep.Results[0])
	}

	var ids []string
	for range 20 {
		ids = append(ids, e.insert("mail"))
	}
	e.assertHeldBack(ids, "other")

	rep = e.resumeOK("bob", "mail")
	if rep.Results[0].Outcome != control.OutcomeResumed || rep.Dispatchers != 2 {
		t.Fatalf("resume report %+v", rep)
	}
	e.assertRanOnce(ids)
	if rep := e.resumeOK("bob", "mail"); rep.Results[0].Outcome != control.OutcomeNotPaused {
		t.Fatalf("second resume: %+v", rep.Results[0])
	}
	kinds, err := e.ctl.Kinds(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(kinds) != 1 || kinds[0].Paused || *kinds[0].PausedBy != "alice" || *kinds[0].ResumedBy != "bob" {
		t.Fatalf("kinds %+v", kinds)
	}
}

func TestPauseRefusesInvalidKinds(t *testing.T) {
	e := setup(t)
	_, err := e.ctl.Pause(context.Background(), []string{"mail", "not a kind"}, "")
	if !errors.Is(err, control.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	kinds, err := e.ctl.Kinds(context.Background())
	if err != nil || len(kinds) != 0 {
		t.Fatalf("an invalid pause changed something: %+v, %v", kinds, err)
	}
}

// A dispatcher started while a kind is paused, and one restarted, hold it
// back too; so do all of them after nats-server restarted on its store.
func TestPauseSurvivesRestarts(t *testing.T) {
	e := setup(t)
	reg := e.registry("mail", "other")
	a := e.dispatcher(reg)
	e.pauseOK("", "mail")
	ids := []string{e.insert("mail")}

	// The dispatcher restarted.
	a.stop()
	a = e.dispatcher(e.registry("mail", "other"))
	ids = append(ids, e.insert("mail"))
	e.assertHeldBack(ids, "other")

	// nats-server restarted on the same store. While it is away the
	// dispatcher cannot vouch for its copy and says so.
	e.nats.Shutdown()
	testenv.WaitFor(t, 30*time.Second, "the dispatcher distrusting its copy", func() bool {
		return a.metric(t, "effects_control_up") == 0 && a.d.Ready(context.Background()) != nil
	})
	e.nats.Start(t)
	testenv.WaitFor(t, 30*time.Second, "the dispatcher ready again", func() bool { return a.d.Ready(context.Background()) == nil })
	ids = append(ids, e.insert("mail"))
	e.assertHeldBack(ids, "other")

	e.resumeOK("", "mail")
	e.assertRanOnce(ids)
}

// An effect running when its kind is paused finishes, and its outcome is
// recorded; the next one waits for the resume.
func TestPauseLetsRunningEffectsFinish(t *testing.T) {
	e := setup(t)
	started, release := make(chan struct{}, 1), make(chan struct{})
	reg := effects.NewRegistry()
	reg.Handle("mail", func(ctx context.Context, eff effects.Effect) (any, error) {
		e.runs.started(eff.ID)
		started <- struct{}{}
		select {
		case <-release:
			return "sent", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}, effects.AttemptTimeout(time.Minute))
	reg.Handle("other", func(context.Context, effects.Effect) (any, error) { return nil, nil })
	cfg := testConfig()
	cfg.AckWait = 0
	e.dispatcherWith(cfg, reg)
	running := e.insert("mail")
	<-started
	e.pauseOK("", "mail")
	close(release)
	e.waitStatus(running, "succeeded")
	next := e.insert("mail")
	e.assertHeldBack([]string{next}, "other")
	e.resumeOK("", "mail")
	e.waitStatus(next, "succeeded")
}

// A pause longer than the ack wait costs the effects the kind's consumer
// had pulled ahead no attempts and no second run: the pause gives them back
// to the stream, and each is delivered again once, after the resume. Left
// unseen in the client's buffer instead, such an effect comes out of it at
// the resume with its ack wait long expired, and JetStream delivers it
// again meanwhile: it runs twice, and each pause would cost it attempts.
func TestPauseLongerThanTheAckWaitUsesNoAttempts(t *testing.T) {
	e := setup(t)
	var mu sync.Mutex
	attempts := map[string][]int{}
	starts := 0
	started, release := make(chan string, 16), make(chan struct{})
	reg := effects.NewRegistry()
	reg.Handle("mail", func(ctx context.Context, eff effects.Effect) (any, error) {
		mu.Lock()
		attempts[eff.ID] = append(attempts[eff.ID], eff.Attempt)
		n := starts
		starts++
		mu.Unlock()
		started <- eff.ID
		var work <-chan struct{}
		switch n {
		case 0, 2: // the two running when the pause comes
			work = release
		case 1: // quick, so that its worker pulls the next two
			return "sent", nil
		default: // after the resume: work that takes a while
			wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			work = wctx.Done()
		}
		select {
		case <-work:
			return "sent", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}, effects.AttemptTimeout(8*time.Second))
	reg.Handle("other", func(context.Context, effects.Effect) (any, error) { return nil, nil })
	cfg := testConfig()
	cfg.Concurrency = 2
	cfg.HandlerTimeout = time.Second
	cfg.AckWait = 8*time.Second + dispatcher.AckWaitMargin // the least mail's attempt timeout allows
	cfg.MaxAttempts = 2
	e.dispatcherWith(cfg, reg)

	// A runs (blocked); B runs and its worker pulls two more: it runs C
	// (blocked), and D waits in the pull buffer.
	a := e.insert("mail")
	<-started
	b := e.insert("mail")
	<-started
	e.waitStatus(b, "succeeded")
	c, d := e.insert("mail"), e.insert("mail")
	<-started
	consumer := dispatcher.ConsumerName("mail")
	testenv.WaitFor(t, 30*time.Second, "D pulled ahead", func() bool {
		return consumerInfo(t, e.js, consumer).Delivered.Consumer == 4
	})

	e.pauseOK("", "mail")
	close(release) // A and C finish and are recorded
	e.waitStatus(a, "succeeded")
	e.waitStatus(c, "succeeded")
	// Paused for longer than the ack wait: nothing of the kind is delivered
	// again or runs meanwhile.
	for end := time.Now().Add(cfg.AckWait + 3*time.Second); time.Now().Before(end); {
		info := consumerInfo(t, e.js, consumer)
		if info.Delivered.Consumer != 4 || info.NumWaiting != 0 {
			t.Fatalf("paused: %d deliveries and %d pull requests waiting; want the 4 before the pause and none", info.Delivered.Consumer, info.NumWaiting)
		}
		select {
		case id := <-started:
			t.Fatalf("effect %s ran while its kind was paused", id)
		case <-time.After(500 * time.Millisecond):
		}
	}

	e.resumeOK("", "mail")
	e.waitStatus(d, "succeeded")
	probe := e.insert("mail") // the workers have pulled again since
	e.waitStatus(probe, "succeeded")
	mu.Lock()
	defer mu.Unlock()
	// Its delivery into the buffer counted once; given back, it runs at
	// its second.
	if got := attempts[d]; len(got) != 1 || got[0] != 2 {
		t.Fatalf("D, pulled ahead when the kind was paused, ran at attempts %v; want once, at attempt 2", got)
	}
}
