package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// These tests race the paths that end a delivery against each other and
// count what JetStream is told: every delivery must be settled exactly once
// (one Ack, Nak or Term; or left, on purpose, to the redelivery), never
// twice and never not at all. The deliveries' messages are counting
// stand-ins, so that a second settle, which JetStream would silently
// ignore, is seen; the dispatcher's connection (for completions) is real.

// countingMsg counts what a delivery's message is told.
type countingMsg struct {
	jetstream.Msg // nil: only the methods below are used on a delivery
	acks, naks    atomic.Int32
	terms         atomic.Int32
	delay         atomic.Int64
}

func (m *countingMsg) Ack() error  { m.acks.Add(1); return nil }
func (m *countingMsg) Nak() error  { m.naks.Add(1); return nil }
func (m *countingMsg) Term() error { m.terms.Add(1); return nil }
func (m *countingMsg) NakWithDelay(d time.Duration) error {
	m.delay.Store(int64(d))
	m.naks.Add(1)
	return nil
}
func (m *countingMsg) InProgress() error    { return nil }
func (m *countingMsg) Subject() string      { return "effects.job" }
func (m *countingMsg) Headers() nats.Header { return nil }
func (m *countingMsg) settles() int32       { return m.acks.Load() + m.naks.Load() + m.terms.Load() }

// onceRig is one executor of an async kind "job" and a sync kind "work"
// of a dispatcher that is not running: the test drives its paths.
type onceRig struct {
	d    *Dispatcher
	job  *executor
	work *executor
}

func startOnceRig(t *testing.T) *onceRig {
	t.Helper()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	reg.HandleAsync("job", func(context.Context, effects.Effect, effects.Done) error { return nil },
		effects.CompletionDeadline(time.Hour))
	reg.Handle("work", func(context.Context, effects.Effect) (any, error) { return "done", nil })
	d, err := New(testConfig(), reg, js, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	r := &onceRig{d: d}
	for _, x := range d.execs {
		switch x.kind {
		case "job":
			r.job = x
		case "work":
			r.work = x
		}
	}
	return r
}

func (r *onceRig) delivery(x *executor) (*delivery, *countingMsg) {
	m := &countingMsg{}
	return &delivery{msg: m, attempt: 1, effect: effects.Effect{ID: newID(), Kind: x.kind, EventID: "ev-" + newID()}}, m
}

// race runs fns at once.
func race(fns ...func()) {
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, f := range fns {
		wg.Go(func() { <-start; f() })
	}
	close(start)
	wg.Wait()
}

// settledOnce checks that dl is settled and its message was told exactly
// once.
func settledOnce(t *testing.T, i int, dl *delivery, m *countingMsg) {
	t.Helper()
	if n := m.settles(); n != 1 {
		t.Fatalf("round %d: settled %d times (acks %d, naks %d, terms %d), want once", i, n, m.acks.Load(), m.naks.Load(), m.terms.Load())
	}
	if s := dl.state.Load(); s != settled {
		t.Fatalf("round %d: state %d, want settled", i, s)
	}
	if dl.keep.In() {
		t.Fatalf("round %d: still kept alive", i)
	}
}

func (r *onceRig) noneHeld(t *testing.T) {
	t.Helper()
	r.job.mu.Lock()
	n := len(r.job.held)
	r.job.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d deliveries still held", n)
	}
	if g := testutil.ToFloat64(r.job.km.held); g != 0 {
		t.Fatalf("effects_async_held = %v, want 0", g)
	}
}

const rounds = 1000

// An async completion (its Done and the completions listener, both) races
// the completion deadline: acked or given a new attempt, never both.
func TestAsyncCompletionRacingItsDeadlineSettlesOnce(t *testing.T) {
	t.Parallel()
	r := startOnceRig(t)
	x := r.job
	var acked, expired int
	for i := range rounds {
		dl, m := r.delivery(x)
		x.finish(dl, result{deferred: true}, false)
		if s := dl.state.Load(); s != held {
			t.Fatalf("state %d after an async start, want held", s)
		}
		race(func() { x.completed(dl) }, func() { x.expire(dl) }, func() { x.completed(dl) })
		settledOnce(t, i, dl, m)
		if m.acks.Load() == 1 {
			acked++
		} else {
			expired++
		}
	}
	r.noneHeld(t)
	if got := testutil.ToFloat64(x.km.handled[deferred]); got != rounds {
		t.Errorf("deferred counted %v, want %d (once per delivery)", got, rounds)
	}
	if got := testutil.ToFloat64(x.km.handled[retried]); got != float64(expired) {
		t.Errorf("retried counted %v, want %d (the expired ones)", got, expired)
	}
	t.Logf("%d acked on their completion, %d expired", acked, expired)
}

// An async handler's Done publishes its completion while the worker is
// still deciding (the handler returning, the hold beginning): acked exactly
// once, not held until the deadline, not nak'ed.
func TestAsyncCompletionRacingTheHandlersReturnSettlesOnce(t *testing.T) {
	t.Parallel()
	r := startOnceRig(t)
	x := r.job
	// The narrowest window first, in order: the completion arrives after the
	// worker claimed the delivery and before its hold begins.
	dl, m := r.delivery(x)
	dl.claim(running)
	x.completed(dl)
	x.settle(dl, decide(x.info(dl, false), result{deferred: true}))
	settledOnce(t, -1, dl, m)
	if m.acks.Load() != 1 {
		t.Fatal("a completion that arrived as the hold began was lost")
	}
	for i := range rounds {
		dl, m := r.delivery(x)
		race(func() { x.completed(dl) }, func() { x.finish(dl, result{deferred: true}, false) })
		settledOnce(t, i, dl, m)
		if m.acks.Load() != 1 {
			t.Fatalf("round %d: not acked: naks %d terms %d", i, m.naks.Load(), m.terms.Load())
		}
	}
	r.noneHeld(t)
	if got := testutil.ToFloat64(x.km.handled[deferred]); got != rounds+1 {
		t.Errorf("deferred counted %v, want %d", got, rounds+1)
	}
}

// A shutdown's release of the held effects races their completion and
// their deadline.
func TestReleaseAtShutdownRacingCompletionAndDeadlineSettlesOnce(t *testing.T) {
	t.Parallel()
	r := startOnceRig(t)
	x := r.job
	for i := range rounds {
		dl, m := r.delivery(x)
		x.finish(dl, result{deferred: true}, false)
		race(x.releaseHeld, func() { x.completed(dl) }, func() { x.expire(dl) })
		settledOnce(t, i, dl, m)
		if m.naks.Load() == 1 && m.delay.Load() <= 0 {
			t.Fatalf("round %d: nak'ed without a delay", i)
		}
	}
	r.noneHeld(t)
}

// An operator's cancel of a held async effect races its completion, its
// deadline and a shutdown's release: one of them settles it, and a cancel
// that wins acks it, counted cancelled, with nothing published.
func TestCancelOfAHeldEffectRacingItsOtherEndsSettlesOnce(t *testing.T) {
	t.Parallel()
	r := startOnceRig(t)
	x := r.job
	var won int
	for i := range rounds {
		dl, m := r.delivery(x)
		x.finish(dl, result{deferred: true}, false)
		before := testutil.ToFloat64(x.km.handled[cancelled])
		race(func() { x.cancelHeld(dl.effect.ID) }, func() { x.completed(dl) }, func() { x.expire(dl) }, x.releaseHeld)
		settledOnce(t, i, dl, m)
		if testutil.ToFloat64(x.km.handled[cancelled]) > before {
			won++
			if m.acks.Load() != 1 {
				t.Fatalf("round %d: counted cancelled, not acked: naks %d terms %d", i, m.naks.Load(), m.terms.Load())
			}
		}
	}
	r.noneHeld(t)
	// An effect not held (never, or any more) is left alone.
	x.cancelHeld(newID())
	t.Logf("the cancel won %d of %d rounds", won, rounds)
}

// The attempt's watchdog gives an attempt up just as its handler returns (at a
// shutdown, or not): one of the two settles it.
func TestOverrunRacingTheHandlersReturnSettlesOnce(t *testing.T) {
	t.Parallel()
	r := startOnceRig(t)
	x := r.work
	for _, stopping := range []bool{false, true} {
		for i := range rounds {
			dl, m := r.delivery(x)
			race(func() { x.finish(dl, result{err: errors.New("timed out")}, stopping) },
				func() { x.finish(dl, result{err: context.Canceled}, stopping) })
			settledOnce(t, i, dl, m)
		}
	}
	if got := testutil.ToFloat64(x.km.handled[retried]) + testutil.ToFloat64(x.km.handled[interrupted]); got != 2*rounds {
		t.Errorf("retried + interrupted counted %v, want %d", got, 2*rounds)
	}
}

// refusingJS refuses every publish at once.
type refusingJS struct{ jetstream.JetStream }

func (refusingJS) PublishMsgAsync(*nats.Msg, ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	return nil, errors.New("refused by the test")
}

// A succeeded effect whose completion cannot be stored is nak'ed, once, to
// run again; at the stop's deadline it is left to the redelivery instead
// (settled, nothing said). Never acked without its completion.
func TestUnpublishedCompletionIsSettledOnce(t *testing.T) {
	t.Parallel()
	r := startOnceRig(t)
	r.d.pubJS = refusingJS{r.d.pubJS}
	x := r.work

	dl, m := r.delivery(x)
	dl.state.Store(deciding) // claimed, as finish does
	o := decide(x.info(dl, false), result{value: "done"})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	x.publishAndSettle(ctx, dl, o)
	settledOnce(t, 0, dl, m)
	if m.naks.Load() != 1 || time.Duration(m.delay.Load()) != r.d.cfg.RetryBase {
		t.Fatalf("naks %d delay %s, want one nak after the retry base", m.naks.Load(), time.Duration(m.delay.Load()))
	}
	if got := testutil.ToFloat64(x.km.handled[retried]); got != 1 {
		t.Errorf("retried counted %v", got)
	}
	if got := testutil.ToFloat64(x.km.handled[succeeded]); got != 0 {
		t.Errorf("succeeded counted %v without a stored completion", got)
	}
	if got := testutil.ToFloat64(x.km.publishErrors); got != 1 {
		t.Errorf("publish errors counted %v", got)
	}

	giveUp, stop := context.WithCancel(context.Background())
	stop()
	r.d.giveUpCtx = giveUp
	dl, m = r.delivery(x)
	x.finish(dl, result{value: "done"}, true)
	if n := m.settles(); n != 0 || dl.state.Load() != settled || dl.keep.In() {
		t.Fatalf("past the stop's deadline: settles %d state %d kept alive %v, want left to the redelivery", n, dl.state.Load(), dl.keep.In())
	}
}

// Messages fetched at a shutdown and never started go back at once,
// uncounted.
func TestGivenBackMessagesAreNakedOnce(t *testing.T) {
	t.Parallel()
	r := startOnceRig(t)
	for i := range 3 {
		m := &countingMsg{}
		r.work.giveBack(m)
		if m.naks.Load() != 1 || m.delay.Load() != 0 || m.settles() != 1 {
			t.Fatalf("round %d: naks %d delay %d settles %d", i, m.naks.Load(), m.delay.Load(), m.settles())
		}
	}
	for v, c := range r.work.km.handled {
		if got := testutil.ToFloat64(c); got != 0 {
			t.Errorf("%s counted %v", v, got)
		}
	}
}

// End to end, on a running dispatcher: async effects whose completion
// arrives about when their deadline passes end with one completion each,
// and every message is settled (nothing left held or unacked).
func TestAsyncCompletionAtItsDeadlineEndsOnce(t *testing.T) {
	t.Parallel()
	const n = 40
	const deadline = 100 * time.Millisecond
	reg := effects.NewRegistry()
	reg.HandleAsync("job", func(ctx context.Context, e effects.Effect, done effects.Done) error {
		go func() {
			// Around the deadline: some before, some after.
			time.Sleep(deadline - 20*time.Millisecond + time.Duration(len(e.ID)%5)*10*time.Millisecond)
			_ = done.Complete(context.WithoutCancel(ctx), fmt.Sprint("attempt ", e.Attempt))
		}()
		return nil
	}, effects.CompletionDeadline(deadline))
	b := setup(t, testConfig(), reg)
	ids := map[string]bool{}
	for range n {
		id, _ := b.publish("job", `{}`)
		ids[id] = true
	}
	got := map[string]int{}
	timeout := time.After(30 * time.Second)
	for len(got) < n {
		select {
		case c := <-b.comps:
			if !ids[c.EffectID] {
				t.Fatalf("completion of an unknown effect %+v", c)
			}
			got[c.EffectID]++
		case <-timeout:
			t.Fatalf("%d of %d effects completed", len(got), n)
		}
	}
	b.consumerSettled("job")
	testenv.WaitFor(t, 5*time.Second, "no effect held", func() bool { return testutil.ToFloat64(b.d.execs[0].km.held) == 0 })
}
