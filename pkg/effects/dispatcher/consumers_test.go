package dispatcher

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/pkg/effects"
)

// startTeam runs a second dispatcher on b's NATS server, as another team's
// program would, and waits until its consumers exist.
func startTeam(t *testing.T, b *bundle, cfg Config, reg *effects.Registry, opts ...ConsumerOption) *Dispatcher {
	t.Helper()
	d, err := New(cfg, reg, b.js, nil, prometheus.NewRegistry(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = d.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	deadline := time.Now().Add(10 * time.Second)
	for d.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatal("team dispatcher not ready in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return d
}

// recorder is a handler that reports every attempt it is given.
func recorder(seen chan<- effects.Effect, err error) effects.HandlerFunc {
	return func(_ context.Context, e effects.Effect) (any, error) {
		seen <- e
		return map[string]string{"seen": e.ID}, err
	}
}

func next(t *testing.T, seen <-chan effects.Effect) effects.Effect {
	t.Helper()
	select {
	case e := <-seen:
		return e
	case <-time.After(15 * time.Second):
		t.Fatal("handler not called in 15s")
		return effects.Effect{}
	}
}

// settledAll waits until the consumer has delivered something and has
// nothing pending or unacked: every delivery was acked or termed.
func settledAll(t *testing.T, js jetstream.JetStream, consumer string) *jetstream.ConsumerInfo {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		cons, err := js.Consumer(context.Background(), effects.EffectsStream, consumer)
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.Delivered.Consumer > 0 && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Consumer == info.Delivered.Consumer {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s not settled in 15s: %+v", consumer, info)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lastSeq(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

func TestTeamConsumerSeesEveryEffectTheDispatcherHandles(t *testing.T) {
	mine := effects.NewRegistry()
	mine.Handle("k", func(_ context.Context, e effects.Effect) (any, error) { return "done", nil })
	b := setup(t, testConfig(), mine)

	seen := make(chan effects.Effect, 100)
	team := effects.NewRegistry()
	team.Handle("k", recorder(seen, nil))
	startTeam(t, b, testConfig(), team, WithConsumerPrefix("audit-"), WithoutCompletions())

	const n = 20
	ids := map[string]bool{}
	for range n {
		id, _ := b.publish("k", `{}`)
		ids[id] = true
	}
	// The dispatcher completes every effect, with its own result: the
	// team's consumer took nothing from it and published nothing.
	completed := map[string]bool{}
	for range n {
		select {
		case c := <-b.comps:
			if !ids[c.EffectID] || completed[c.EffectID] || string(c.Completion) != `"done"` {
				t.Errorf("unexpected completion %+v (%s); want one per effect, with the dispatcher's \"done\"", c, c.Completion)
			}
			completed[c.EffectID] = true
		case <-time.After(15 * time.Second):
			t.Fatalf("%d of %d effects completed in 15s", len(completed), n)
		}
	}
	got := map[string]bool{}
	for range n {
		got[next(t, seen).ID] = true
	}
	for id := range ids {
		if !got[id] {
			t.Errorf("the team consumer never saw %s", id)
		}
	}
	settledAll(t, b.js, "audit-k")
	settledAll(t, b.js, ConsumerName("k"))
}

func TestDeliverAllReadsRetainedEffectsDeliverNewDoesNot(t *testing.T) {
	mine := effects.NewRegistry()
	mine.Handle("k", func(context.Context, effects.Effect) (any, error) { return "done", nil })
	b := setup(t, testConfig(), mine)
	before, _ := b.publish("k", `{}`)
	b.completion(before)

	cfg := testConfig()
	cfg.Concurrency = 1 // one at a time, in stream order
	allSeen, newSeen := make(chan effects.Effect, 10), make(chan effects.Effect, 10)
	all, fresh := effects.NewRegistry(), effects.NewRegistry()
	all.Handle("k", recorder(allSeen, nil))
	fresh.Handle("k", recorder(newSeen, nil))
	startTeam(t, b, cfg, all, WithConsumerPrefix("all-"), WithDeliverFrom(DeliverAll), WithoutCompletions())
	startTeam(t, b, cfg, fresh, WithConsumerPrefix("new-"), WithDeliverFrom(DeliverNew), WithoutCompletions())

	after, _ := b.publish("k", `{}`)
	b.completion(after)
	if e := next(t, allSeen); e.ID != before {
		t.Errorf("DeliverAll: first effect %s, want the one published before it started (%s)", e.ID, before)
	}
	if e := next(t, allSeen); e.ID != after {
		t.Errorf("DeliverAll: second effect %s, want %s", e.ID, after)
	}
	if e := next(t, newSeen); e.ID != after {
		t.Errorf("DeliverNew: first effect %s, want only the one published after it started (%s)", e.ID, after)
	}
	settledAll(t, b.js, "new-k")
	settledAll(t, b.js, "all-k")
	select {
	case e := <-newSeen:
		t.Errorf("DeliverNew handled %s too", e.ID)
	default:
	}
}

func TestWithoutCompletionsPublishesNothingAndRetriesLikeTheDispatcher(t *testing.T) {
	srvReg := effects.NewRegistry()
	srvReg.Handle("other", func(context.Context, effects.Effect) (any, error) { return nil, nil })
	b := setup(t, testConfig(), srvReg) // the dispatcher owns another kind only

	seen := make(chan effects.Effect, 20)
	failing := make(chan effects.Effect, 20)
	team := effects.NewRegistry()
	team.Handle("k", recorder(seen, nil))
	team.Handle("bad", recorder(failing, errors.New("audit store down")))
	cfg := testConfig() // MaxAttempts 3
	startTeam(t, b, cfg, team, WithConsumerPrefix("audit-"), WithoutCompletions())

	ok, _ := b.publish("k", `{}`)
	bad, _ := b.publish("bad", `{}`)
	if e := next(t, seen); e.ID != ok {
		t.Fatalf("saw %s, want %s", e.ID, ok)
	}
	for attempt := 1; attempt <= cfg.MaxAttempts; attempt++ {
		if e := next(t, failing); e.ID != bad || e.Attempt != attempt {
			t.Fatalf("attempt %d: got %s attempt %d", attempt, e.ID, e.Attempt)
		}
	}
	settledAll(t, b.js, "audit-k")
	settledAll(t, b.js, "audit-bad") // termed after its last attempt
	select {
	case e := <-failing:
		t.Errorf("attempt %d after the last one", e.Attempt)
	default:
	}
	if n := lastSeq(t, b.js, effects.CompletedStream); n != 0 {
		t.Errorf("%d completions published; want none", n)
	}
}

func TestConsumerOptionsRefuseTheDispatchersNames(t *testing.T) {
	reg := effects.NewRegistry()
	reg.Handle("k", func(context.Context, effects.Effect) (any, error) { return nil, nil })
	for _, p := range []string{"", "dispatcher-", "dispatcher", "dispatcher-audit-", "a.b", "a b"} {
		if _, err := New(testConfig(), reg, nil, nil, prometheus.NewRegistry(), WithConsumerPrefix(p)); err == nil {
			t.Errorf("prefix %q accepted", p)
		}
	}
	if _, err := New(testConfig(), reg, nil, nil, prometheus.NewRegistry(), WithDeliverFrom(DeliverFrom(7))); err == nil {
		t.Error("deliver from 7 accepted")
	}
	async := effects.NewRegistry()
	async.HandleAsync("a", func(context.Context, effects.Effect, effects.Done) error { return nil })
	_, err := New(testConfig(), async, nil, nil, prometheus.NewRegistry(), WithConsumerPrefix("audit-"), WithoutCompletions())
	if err == nil || !strings.Contains(err.Error(), "asynchronous") {
		t.Errorf("async handler with WithoutCompletions: %v", err)
	}
	if _, err := New(testConfig(), reg, nil, nil, prometheus.NewRegistry(), WithConsumerPrefix("audit-"), WithDeliverFrom(DeliverNew)); err != nil {
		t.Errorf("a team's options refused: %v", err)
	}
}
