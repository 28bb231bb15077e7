package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// bundle is one test's dispatcher and the means to feed and watch it.
type bundle struct {
	t     *testing.T
	js    jetstream.JetStream
	reg   *prometheus.Registry
	comps chan effects.Completion
	d     *Dispatcher
	stop  context.CancelFunc
	// stopped closes when Run returned; runErr is what it returned.
	stopped chan struct{}
	runErr  error
}

func testConfig() Config {
	return Config{
		Concurrency:     8,
		HandlerTimeout:  5 * time.Second,
		MaxAttempts:     3,
		RetryBase:       10 * time.Millisecond,
		RetryMax:        50 * time.Millisecond,
		ShutdownTimeout: 2 * time.Second,
	}
}

func setup(t *testing.T, cfg Config, reg *effects.Registry) *bundle {
	t.Helper()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	b := &bundle{t: t, js: js, comps: make(chan effects.Completion, 100)}
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, effects.CompletedStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		c, err := effects.ParseCompletion(m.Data())
		if err != nil {
			t.Errorf("bad completion %s: %v", m.Data(), err)
			return
		}
		b.comps <- c
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	b.start(cfg, reg)
	return b
}

func (b *bundle) start(cfg Config, reg *effects.Registry) {
	b.t.Helper()
	b.reg = prometheus.NewRegistry()
	d, err := New(cfg, reg, b.js, nil, b.reg)
	if err != nil {
		b.t.Fatal(err)
	}
	b.d = d
	ctx, cancel := context.WithCancel(context.Background())
	b.stop = cancel
	stopped := make(chan struct{})
	b.stopped = stopped
	go func() { b.runErr = d.Run(ctx); close(stopped) }()
	deadline := time.Now().Add(10 * time.Second)
	for d.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			b.t.Fatal("dispatcher not ready in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.t.Cleanup(func() { cancel(); <-stopped })
}

var idSeq atomic.Int64

func newID() string {
	return fmt.Sprintf("00000000-0000-4000-8000-%012d", idSeq.Add(1))
}

// publish puts an effect on the stream the way the ingest does.
func (b *bundle) publish(kind, payload string) (id, eventID string) {
	b.t.Helper()
	id, eventID = newID(), "ev-"+newID()
	body := fmt.Sprintf(`{"id":%q,"kind":%q,"payload":%s,"created_at":%q,"session_variables":null}`,
		id, kind, payload, time.Now().UTC().Format(time.RFC3339Nano))
	b.publishRaw(effects.Subject(kind), eventID, []byte(body))
	return id, eventID
}

func (b *bundle) publishRaw(subject, eventID string, body []byte) {
	b.t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, eventID)
	if _, err := b.js.PublishMsg(context.Background(), msg); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bundle) completion(id string) effects.Completion {
	b.t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case c := <-b.comps:
			if c.EffectID == id {
				return c
			}
			b.t.Errorf("unexpected completion %+v", c)
		case <-timeout:
			b.t.Fatalf("no completion for %s in 15s", id)
		}
	}
}

func (b *bundle) noCompletion(within time.Duration) {
	b.t.Helper()
	select {
	case c := <-b.comps:
		b.t.Fatalf("unexpected completion %+v", c)
	case <-time.After(within):
	}
}

func (b *bundle) handled(kind, outcome string) float64 {
	return testutil.ToFloat64(b.d.m.handled.WithLabelValues(kind, outcome))
}

func (b *bundle) consumerInfo(kind string) *jetstream.ConsumerInfo {
	b.t.Helper()
	cons, err := b.js.Consumer(context.Background(), effects.EffectsStream, ConsumerName(kind))
	if err != nil {
		b.t.Fatal(err)
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		b.t.Fatal(err)
	}
	return info
}

// consumerSettled waits until the kind's consumer has nothing pending or
// unacked: every message was acked or terminated.
func (b *bundle) consumerSettled(kind string) {
	b.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cons, err := b.js.Consumer(context.Background(), effects.EffectsStream, ConsumerName(kind))
		if err != nil {
			b.t.Fatal(err)
		}
		info, err := cons.Info(context.Background())
		if err != nil {
			b.t.Fatal(err)
		}
		if info.NumAckPending == 0 && info.NumPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("consumer %s not settled: %+v", kind, info)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSyncHandlerSucceeds(t *testing.T) {
	t.Parallel()
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	b := setup(t, testConfig(), reg)

	id, _ := b.publish("echo", `{"n": 1, "html": "<b>"}`)
	c := b.completion(id)
	if c.Status != effects.StatusSucceeded || c.Attempts != 1 || c.Kind != "echo" || c.Error != nil {
		t.Fatalf("completion %+v", c)
	}
	var got map[string]any
	if err := json.Unmarshal(c.Completion, &got); err != nil || got["html"] != "<b>" || got["n"] != 1.0 {
		t.Fatalf("completion payload %s (%v)", c.Completion, err)
	}
	b.consumerSettled("echo")
	if n := b.handled("echo", "succeeded"); n != 1 {
		t.Fatalf("succeeded counted %v", n)
	}
}

func TestHandlerGetsEffect(t *testing.T) {
	t.Parallel()
	got := make(chan effects.Effect, 1)
	reg := effects.NewRegistry()
	reg.Handle("look", func(_ context.Context, e effects.Effect) (any, error) { got <- e; return nil, nil })
	b := setup(t, testConfig(), reg)
	id, eventID := b.publish("look", `{"a":  [1, 2]}`)
	e := <-got
	if e.ID != id || e.EventID != eventID || e.Attempt != 1 || string(e.Payload) != `{"a":  [1, 2]}` || e.CreatedAt.IsZero() {
		t.Fatalf("effect %+v payload %s", e, e.Payload)
	}
	if c := b.completion(id); string(c.Completion) != "null" {
		t.Fatalf("nil result should complete with null, got %s", c.Completion)
	}
}

func TestErrorsAreRetriedThenSucceed(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("flaky", func(_ context.Context, e effects.Effect) (any, error) {
		if calls.Add(1) < 3 {
			return nil, errors.New("not yet")
		}
		return map[string]int{"attempt": e.Attempt}, nil
	})
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("flaky", `{}`)
	c := b.completion(id)
	if c.Status != effects.StatusSucceeded || c.Attempts != 3 || string(c.Completion) != `{"attempt":3}` {
		t.Fatalf("completion %+v %s", c, c.Completion)
	}
	if n := b.handled("flaky", "retried"); n != 2 {
		t.Fatalf("retried counted %v", n)
	}
}

func TestErrorsFailAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("broken", func(context.Context, effects.Effect) (any, error) {
		return nil, fmt.Errorf("storage said 503 (call %d)", calls.Add(1))
	})
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("broken", `{}`)
	c := b.completion(id)
	if c.Status != effects.StatusFailed || c.Attempts != 3 || c.Error == nil || *c.Error != "storage said 503 (call 3)" {
		t.Fatalf("completion %+v", c)
	}
	b.consumerSettled("broken")
	b.noCompletion(200 * time.Millisecond)
	if calls.Load() != 3 {
		t.Fatalf("handler ran %d times", calls.Load())
	}
}

func TestPermanentFailsAtOnce(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("strict", func(context.Context, effects.Effect) (any, error) {
		calls.Add(1)
		return nil, effects.Permanent(errors.New("rateset 4512 does not exist"))
	})
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("strict", `{}`)
	c := b.completion(id)
	if c.Status != effects.StatusFailed || c.Attempts != 1 || *c.Error != "rateset 4512 does not exist" {
		t.Fatalf("completion %+v", c)
	}
	b.consumerSettled("strict")
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times", calls.Load())
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	t.Parallel()
	var first time.Time
	var mu sync.Mutex
	reg := effects.NewRegistry()
	reg.Handle("later", func(_ context.Context, e effects.Effect) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		if e.Attempt == 1 {
			first = time.Now()
			return nil, effects.RetryAfter(700*time.Millisecond, errors.New("429"))
		}
		return time.Since(first).Milliseconds(), nil
	})
	cfg := testConfig()
	cfg.RetryMax = 5 * time.Second // RetryAfter is capped by the max retry delay
	b := setup(t, cfg, reg)
	id, _ := b.publish("later", `{}`)
	c := b.completion(id)
	var waited int64
	_ = json.Unmarshal(c.Completion, &waited)
	// The backoff is 10-20ms here, so only RetryAfter explains a wait this long.
	if c.Status != effects.StatusSucceeded || waited < 700 {
		t.Fatalf("completion %+v after %dms", c, waited)
	}
}

func TestPanicIsAnError(t *testing.T) {
	t.Parallel()
	reg := effects.NewRegistry()
	reg.Handle("boom", func(context.Context, effects.Effect) (any, error) { panic("kaboom") })
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("boom", `{}`)
	c := b.completion(id)
	if c.Status != effects.StatusFailed || c.Attempts != 3 || *c.Error != "panic: kaboom" {
		t.Fatalf("completion %+v", c)
	}
}

// A handler that ignores its context is given up: its attempt counts as a
// timeout, its late result is discarded, it is counted while it runs, and
// no new attempt of the same effect runs alongside it.
func TestHandlerIgnoringTimeoutIsGivenUp(t *testing.T) {
	t.Parallel()
	var calls, running, overlapped atomic.Int32
	release := make(chan struct{})
	reg := effects.NewRegistry()
	reg.Handle("stuck", func(ctx context.Context, e effects.Effect) (any, error) {
		if running.Add(1) > 1 {
			overlapped.Add(1)
		}
		defer running.Add(-1)
		if calls.Add(1) == 1 {
			<-release // ignores ctx
			return "late", nil
		}
		return "ok", nil
	})
	cfg := testConfig()
	cfg.HandlerTimeout = 100 * time.Millisecond
	cfg.MaxAttempts = 1000 // the attempts while the first overruns are retried quickly
	b := setup(t, cfg, reg)
	id, _ := b.publish("stuck", `{}`)
	m := b.d.m
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.overruns.WithLabelValues("stuck")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("overrun not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := testutil.ToFloat64(m.overrunning.WithLabelValues("stuck")); n != 1 {
		t.Fatalf("overrunning %v", n)
	}
	// Attempts of the same effect meanwhile do not run the handler.
	b.noCompletion(300 * time.Millisecond)
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times while the first attempt overran", calls.Load())
	}
	close(release)
	c := b.completion(id)
	if c.Status != effects.StatusSucceeded || string(c.Completion) != `"ok"` || c.Attempts < 3 {
		t.Fatalf("completion %+v %s", c, c.Completion)
	}
	if overlapped.Load() != 0 {
		t.Fatal("attempts of one effect overlapped")
	}
	if n := testutil.ToFloat64(m.overrunning.WithLabelValues("stuck")); n != 0 {
		t.Fatalf("overrunning %v after the handler returned", n)
	}
}

func TestTimeoutErrorSaysSo(t *testing.T) {
	t.Parallel()
	reg := effects.NewRegistry()
	reg.Handle("slow", func(ctx context.Context, e effects.Effect) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	cfg := testConfig()
	cfg.HandlerTimeout = 50 * time.Millisecond
	cfg.MaxAttempts = 1
	b := setup(t, cfg, reg)
	id, _ := b.publish("slow", `{}`)
	c := b.completion(id)
	if c.Status != effects.StatusFailed || !strings.Contains(*c.Error, "timed out after 50ms") {
		t.Fatalf("completion %+v %s", c, *c.Error)
	}
}

func TestHandlersOfOneKindRunConcurrently(t *testing.T) {
	t.Parallel()
	const n = 8
	var running atomic.Int32
	all := make(chan struct{})
	reg := effects.NewRegistry()
	reg.Handle("wide", func(ctx context.Context, e effects.Effect) (any, error) {
		if running.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
			return "together", nil
		case <-ctx.Done():
			return nil, effects.Permanent(errors.New("handlers did not run concurrently"))
		}
	})
	cfg := testConfig()
	cfg.Concurrency = n
	b := setup(t, cfg, reg)
	var ids []string
	for range n {
		id, _ := b.publish("wide", `{}`)
		ids = append(ids, id)
	}
	seen := map[string]bool{}
	for range n {
		c := <-b.comps
		if c.Status != effects.StatusSucceeded {
			t.Fatalf("completion %+v", c)
		}
		seen[c.EffectID] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("no completion for %s", id)
		}
	}
}

func TestAsyncHandlerCompletesLater(t *testing.T) {
	t.Parallel()
	refs := make(chan effects.Done, 1)
	reg := effects.NewRegistry()
	reg.HandleAsync("publish_rateset", func(ctx context.Context, e effects.Effect, done effects.Done) error {
		refs <- done
		return nil
	})
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("publish_rateset", `{"RATESET": 4512}`)
	done := <-refs
	b.noCompletion(100 * time.Millisecond)
	// Held, not acked, until the completion arrives: a crash now would
	// bring the effect back.
	if info := b.consumerInfo("publish_rateset"); info.NumAckPending != 1 {
		t.Fatalf("async effect not held: %+v", info)
	}
	if n := b.handled("publish_rateset", "deferred"); n != 1 {
		t.Fatalf("deferred counted %v", n)
	}
	// The worker finishes later, from another process in real life: only
	// the ref crosses over.
	raw, _ := json.Marshal(done.Ref())
	var ref effects.Ref
	_ = json.Unmarshal(raw, &ref)
	if err := effects.NewClient(b.js).Complete(context.Background(), ref, map[string]any{"uploaded": 4512}); err != nil {
		t.Fatal(err)
	}
	c := b.completion(id)
	if c.Status != effects.StatusSucceeded || string(c.Completion) != `{"uploaded":4512}` || c.Attempts != 1 {
		t.Fatalf("completion %+v %s", c, c.Completion)
	}
	b.consumerSettled("publish_rateset") // the completion let it go
	// Completing the same delivery twice stores it once.
	if err := done.Complete(context.Background(), map[string]any{"uploaded": 4512}); err != nil {
		t.Fatal(err)
	}
	b.noCompletion(200 * time.Millisecond)
}

func TestMalformedEffectFailsTheRow(t *testing.T) {
	t.Parallel()
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	b := setup(t, testConfig(), reg)
	id := newID()
	b.publishRaw("effects.echo", "ev-bad-1", []byte(fmt.Sprintf(`{"id":%q,"kind":"other","payload":{}}`, id)))
	c := b.completion(id)
	// Failed as the subject's kind, never as the kind the body names.
	if c.Status != effects.StatusFailed || c.Kind != "echo" || !strings.Contains(*c.Error, `does not match the subject's kind "echo"`) {
		t.Fatalf("completion %+v", c)
	}
	b.publishRaw("effects.echo", "ev-bad-2", []byte(`not json`))
	b.consumerSettled("echo")
	b.noCompletion(100 * time.Millisecond)
	if n := b.handled("echo", "malformed"); n != 2 {
		t.Fatalf("malformed counted %v", n)
	}
}

func TestShutdownReturnsUnfinishedWorkUncounted(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("patient", func(ctx context.Context, e effects.Effect) (any, error) {
		if calls.Add(1) == 1 {
			started <- struct{}{}
			<-ctx.Done() // interrupted by the shutdown
			return nil, ctx.Err()
		}
		return "second run", nil
	})
	cfg := testConfig()
	cfg.ShutdownTimeout = 100 * time.Millisecond
	b := setup(t, cfg, reg)
	id, _ := b.publish("patient", `{}`)
	<-started
	b.stop()
	<-b.stopped
	if b.runErr != nil {
		t.Fatalf("Run after stop: %v", b.runErr)
	}
	if n := b.handled("patient", "interrupted"); n != 1 {
		t.Fatalf("interrupted counted %v", n)
	}
	if n := b.handled("patient", "failed") + b.handled("patient", "retried"); n != 0 {
		t.Fatalf("shutdown counted as failure: %v", n)
	}
	// The durable consumer outlives the process and the effect is there for
	// the next one, at once.
	b.start(cfg, reg)
	c := b.completion(id)
	if c.Status != effects.StatusSucceeded || string(c.Completion) != `"second run"` {
		t.Fatalf("completion %+v", c)
	}
}

// A stop while messages are pulled ahead (held by the iterator, waiting for
// a worker) handles them within the shutdown timeout. Given back, each
// would come back as its second attempt without having run once, so every
// deploy would use up attempts (the fault suite's SIGTERM test found rows
// that ran once showing attempts 2).
func TestShutdownHandlesPulledAheadMessagesAsFirstAttempts(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var blocked atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("queued", func(ctx context.Context, e effects.Effect) (any, error) {
		if string(e.Payload) != `{}` {
			blocked.Add(1)
			<-release
		}
		return "done", nil
	})
	cfg := testConfig()
	cfg.Concurrency = 4
	b := setup(t, cfg, reg)
	// The first effects return at once, so the workers come back to the
	// iterator and it pulls ahead; the rest hold every worker.
	var ids []string
	for i := range 24 {
		payload := `{}`
		if i >= 8 {
			payload = `{"block": true}`
		}
		id, _ := b.publish("queued", payload)
		ids = append(ids, id)
	}
	deadline := time.Now().Add(3 * time.Second)
	for blocked.Load() < 4 || b.consumerInfo("queued").NumAckPending <= 4 {
		if time.Now().After(deadline) {
			t.Fatalf("no message pulled ahead: %d handlers blocked, %+v", blocked.Load(), b.consumerInfo("queued"))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("at the stop: %d handlers running, %d messages out", blocked.Load(), b.consumerInfo("queued").NumAckPending)
	b.stop()
	close(release)
	<-b.stopped
	if n := b.handled("queued", "interrupted"); n != 0 {
		t.Fatalf("interrupted %v", n)
	}
	b.start(cfg, reg)
	got := map[string]bool{}
	for len(got) < len(ids) {
		select {
		case c := <-b.comps:
			if c.Status != effects.StatusSucceeded || c.Attempts != 1 {
				t.Errorf("completion %+v: every effect ran once, at its first attempt", c)
			}
			got[c.EffectID] = true
		case <-time.After(15 * time.Second):
			t.Fatalf("%d of %d effects completed", len(got), len(ids))
		}
	}
}

func TestShutdownLetsRunningHandlersFinish(t *testing.T) {
	t.Parallel()
	started := make(chan struct{}, 1)
	reg := effects.NewRegistry()
	reg.Handle("finisher", func(ctx context.Context, e effects.Effect) (any, error) {
		started <- struct{}{}
		time.Sleep(300 * time.Millisecond)
		return "finished", ctx.Err()
	})
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("finisher", `{}`)
	<-started
	b.stop()
	c := b.completion(id)
	if c.Status != effects.StatusSucceeded {
		t.Fatalf("completion %+v", c)
	}
	<-b.stopped
	if b.runErr != nil {
		t.Fatal(b.runErr)
	}
	b.consumerSettled("finisher")
}

func TestDecide(t *testing.T) {
	plain := errors.New("x")
	now := time.Now()
	held := func(in *attemptInfo) { in.held, in.heldUntil = true, now.Add(time.Minute) }
	completed := func(in *attemptInfo) { in.completed = true }
	heldCompleted := func(in *attemptInfo) { held(in); completed(in) }
	gaveUp := func(in *attemptInfo) { in.gaveUp = true }
	cases := []struct {
		name     string
		attempt  int
		r        result
		stopping bool
		with     func(*attemptInfo) // what else is known of the delivery
		want     verdict
		action   action
		delay    time.Duration // -1: any
		complete bool          // a completion is published first
	}{
		{"success", 1, result{}, false, nil, succeeded, ack, 0, true},
		{"async started", 1, result{deferred: true}, false, nil, deferred, hold, 0, false},
		{"error", 1, result{err: plain}, false, nil, retried, nak, -1, false},
		{"last attempt", 3, result{err: plain}, false, nil, failed, term, 0, true},
		{"beyond the last attempt, without a run", 4, result{}, false, nil, failed, term, 0, true},
		{"permanent", 1, result{err: effects.Permanent(plain)}, false, nil, failed, term, 0, true},
		{"permanent while stopping", 1, result{err: effects.Permanent(plain)}, true, nil, failed, term, 0, true},
		{"retry after", 1, result{err: effects.RetryAfter(42*time.Second, plain)}, false, nil, retried, nak, 42 * time.Second, false},
		{"retry after on last attempt", 3, result{err: effects.RetryAfter(time.Second, plain)}, false, nil, failed, term, 0, true},
		{"stopping", 3, result{err: context.Canceled}, true, nil, interrupted, nak, 0, false},
		{"success while stopping", 1, result{}, true, nil, succeeded, ack, 0, true},
		{"malformed", 1, result{malformed: plain}, false, nil, malformed, term, 0, true},
		// An async handler's completion published by its Done before the
		// handler returned: acked, counted once as deferred, whatever the
		// handler returned after it.
		{"completed before the hold", 1, result{deferred: true}, false, completed, deferred, ack, 0, false},
		{"completed, then the handler failed", 1, result{err: plain}, false, completed, deferred, ack, 0, false},
		{"completed, then the shutdown", 1, result{err: context.Canceled}, true, completed, deferred, ack, 0, false},
		// A held delivery's end: counted when its hold began.
		{"completed while held", 1, result{}, false, heldCompleted, noVerdict, ack, 0, false},
		{"deadline passed", 1, result{err: errNoCompletion}, false, held, retried, nak, -1, false},
		{"deadline passed on the last attempt", 3, result{err: errNoCompletion}, false, held, failed, term, 0, true},
		{"held, given back at a shutdown", 1, result{givenBack: true}, true, held, noVerdict, nak, time.Minute, false},
		{"fetched at a shutdown, given back", 1, result{givenBack: true}, true, nil, noVerdict, nak, 0, false},
		// The completion of an outcome decided before could not be stored.
		{"completion not published", 1, result{unpublished: plain}, false, nil, retried, nak, time.Second, false},
		{"completion not published by the stop's deadline", 1, result{unpublished: plain}, true, gaveUp, noVerdict, leave, 0, false},
		// An operator's cancel (the row says cancelled already): acked,
		// nothing published, whatever the attempt or the handler's result.
		{"cancelled before its attempt", 1, result{cancelled: true}, false, nil, cancelled, ack, 0, false},
		{"cancelled beyond the last attempt", 4, result{cancelled: true}, false, nil, cancelled, ack, 0, false},
		{"cancelled while running, the handler failed", 3, result{err: context.Canceled, cancelled: true}, false, nil, cancelled, ack, 0, false},
		{"cancelled while running, during a shutdown", 1, result{err: context.Canceled, cancelled: true}, true, nil, cancelled, ack, 0, false},
		{"cancelled while held", 1, result{cancelled: true}, false, held, cancelled, ack, 0, false},
		{"completed, then cancelled", 1, result{deferred: true, cancelled: true}, false, completed, deferred, ack, 0, false},
	}
	for _, tc := range cases {
		in := attemptInfo{effect: effects.Effect{ID: newID(), Kind: "k"}, attempt: tc.attempt, maxAttempts: 3,
			stopping: tc.stopping, now: now, retryBase: time.Second, maxDelay: time.Minute}
		if tc.with != nil {
			tc.with(&in)
		}
		o := decide(in, tc.r)
		if o.verdict != tc.want || o.action != tc.action || (tc.delay >= 0 && o.delay != tc.delay) || (o.completion != nil) != tc.complete {
			t.Errorf("%s: got %+v, want %q action %d delay %s completion %v", tc.name, o, tc.want, tc.action, tc.delay, tc.complete)
		}
	}
}

// The retry delay doubles from the base per attempt up to the max, with
// equal jitter (internal/retry's Policy.Delay).
func TestBackoffGrowsWithJitterAndCap(t *testing.T) {
	for attempt, nominal := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 80: 10 * time.Second} {
		seen := map[time.Duration]bool{}
		in := attemptInfo{effect: effects.Effect{ID: newID(), Kind: "k"}, attempt: attempt, maxAttempts: 100,
			now: time.Now(), retryBase: time.Second, maxDelay: 10 * time.Second}
		for range 50 {
			got := decide(in, result{err: errors.New("x")}).delay
			if got < nominal/2 || got > nominal {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, got, nominal/2, nominal)
			}
			seen[got] = true
		}
		if len(seen) < 2 {
			t.Fatalf("attempt %d: no jitter", attempt)
		}
	}
}

func TestConfigValidateNamesTheVariable(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Concurrency: -1}, "EFFECTS_CONCURRENCY"},
		{Config{MaxAttempts: -2}, "EFFECTS_MAX_ATTEMPTS"},
		{Config{RetryBase: time.Minute, RetryMax: time.Second}, "EFFECTS_RETRY_MAX"},
		{Config{AckWait: time.Millisecond}, "EFFECTS_ACK_WAIT"},
		// Effects pulled ahead wait up to one attempt for a worker: an ack
		// wait no longer than the handler timeout would deliver them twice.
		{Config{HandlerTimeout: time.Minute, AckWait: time.Minute}, "EFFECTS_ACK_WAIT"},
		{Config{Concurrency: 50, MaxAckPending: 10}, "EFFECTS_MAX_ACK_PENDING"},
	} {
		err := tc.cfg.WithDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error naming %s", tc.cfg, err, tc.want)
		}
	}
	if err := (Config{}).WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestCompletionsGoThroughTheirOwnConnection(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	consumeNC, js := srv.Connect(t)
	publishNC, pjs := srv.Connect(t)
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	d, err := New(testConfig(), reg, js, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	d.PublishThrough(pjs)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = d.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	for d.Ready(ctx) != nil {
		time.Sleep(5 * time.Millisecond)
	}
	msg := nats.NewMsg("effects.echo")
	msg.Data = []byte(`{"id":"00000000-0000-4000-8000-00000000abcd","kind":"echo","payload":{},"created_at":"2026-03-14T09:26:53Z","session_variables":null}`)
	msg.Header.Set(jetstream.MsgIDHeader, "ev-own-conn")
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	cs, _ := js.Stream(ctx, effects.CompletedStream)
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := cs.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no completion")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The completion (and nothing else of ours) went out on the publishing
	// connection; the consuming one carried the pulls and the ack.
	if out := publishNC.Stats().OutMsgs; out != 1 {
		t.Fatalf("publishing connection sent %d messages, want the 1 completion", out)
	}
	if consumeNC.Stats().OutMsgs < 2 {
		t.Fatalf("consuming connection sent %d messages", consumeNC.Stats().OutMsgs)
	}
}

func TestConfigFromEnv(t *testing.T) {
	c, err := configFromEnv(envconfig.FromMap(map[string]string{"EFFECTS_CONCURRENCY": "7", "EFFECTS_RETRY_BASE": "250ms"}), effects.StreamOptions{})
	if err != nil || c.Concurrency != 7 || c.RetryBase != 250*time.Millisecond || c.MaxAttempts != 10 || c.Streams.MaxAge != 168*time.Hour {
		t.Fatalf("%+v %v", c, err)
	}
	if l, err := c.limitsFor("k", effects.KindOptions{}); err != nil || l.ackWait != c.HandlerTimeout+30*time.Second {
		t.Fatalf("default ack wait %s %v", l.ackWait, err)
	}
	// The ack wait follows a longer handler timeout unless it is set.
	c, err = configFromEnv(envconfig.FromMap(map[string]string{"EFFECTS_HANDLER_TIMEOUT": "5m"}), effects.StreamOptions{})
	if l, _ := c.limitsFor("k", effects.KindOptions{}); err != nil || l.ackWait != 5*time.Minute+30*time.Second {
		t.Fatalf("%+v %v", c, err)
	}
	// And a kind's own attempt timeout.
	if l, _ := c.limitsFor("k", effects.KindOptions{AttemptTimeout: 10 * time.Minute}); l.ackWait != 10*time.Minute+30*time.Second {
		t.Fatalf("kind ack wait %s", l.ackWait)
	}
	if _, err := configFromEnv(envconfig.FromMap(map[string]string{"EFFECTS_HANDLER_TIMEOUT": "5m", "EFFECTS_ACK_WAIT": "1m"}), effects.StreamOptions{}); err == nil {
		t.Fatal("ack wait below the handler timeout accepted")
	}
	// An explicit zero is a value, checked like any other.
	if _, err := configFromEnv(envconfig.FromMap(map[string]string{"EFFECTS_CONCURRENCY": "0"}), effects.StreamOptions{}); err == nil ||
		!strings.Contains(err.Error(), "EFFECTS_CONCURRENCY") {
		t.Fatalf("EFFECTS_CONCURRENCY=0: %v", err)
	}
	if _, err := configFromEnv(envconfig.FromMap(map[string]string{"EFFECTS_MAX_ATTEMPTS": "many"}), effects.StreamOptions{}); err == nil ||
		!strings.Contains(err.Error(), "EFFECTS_MAX_ATTEMPTS") {
		t.Fatalf("EFFECTS_MAX_ATTEMPTS=many: %v", err)
	}
}

func TestRunReturnsNilWhenStoppedBeforeNATSAnswers(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	nc, js := srv.Connect(t)
	srv.Shutdown() // NATS is down when the dispatcher starts
	_ = nc
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return nil, nil })
	d, err := New(testConfig(), reg, js, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := d.Run(ctx); err != nil {
		t.Fatalf("a stop before NATS answered is not a failure: %v", err)
	}
}
