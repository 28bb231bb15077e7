package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// runOn starts another dispatcher on js (a connection of its own) and
// returns its stop function, which waits for Run to return.
func runOn(t *testing.T, js jetstream.JetStream, cfg Config, reg *effects.Registry) (*Dispatcher, func()) {
	t.Helper()
	return runLogged(t, js, cfg, reg, nil)
}

// runLogged is runOn with the dispatcher's logger.
func runLogged(t *testing.T, js jetstream.JetStream, cfg Config, reg *effects.Registry, logger *slog.Logger) (*Dispatcher, func()) {
	t.Helper()
	d, err := New(cfg, reg, js, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		if err := d.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
		close(stopped)
	}()
	waitFor(t, "dispatcher ready", func() bool { return d.Ready(ctx) == nil })
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-stopped }) }
	t.Cleanup(stop)
	return d, stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Finding 1: a completion over the server's max_payload fails the effect
// at once, saying its size and the limit; the handler is not run again.
func TestOversizedCompletionFailsAtOnce(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("big", func(context.Context, effects.Effect) (any, error) {
		calls.Add(1)
		return strings.Repeat("x", 2<<20), nil
	})
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("big", `{}`)
	c := b.completion(id)
	if c.Status != effects.StatusFailed || c.Attempts != 1 ||
		!strings.Contains(*c.Error, "bytes, over the NATS server's max_payload of 1048576 bytes") {
		t.Fatalf("completion %+v %v", c, *c.Error)
	}
	b.consumerSettled("big")
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times", calls.Load())
	}
}

// Finding 1: completions are not HTML-escaped: an echo of '&' and '<'
// stays one byte per character.
func TestCompletionIsNotHTMLEscaped(t *testing.T) {
	t.Parallel()
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	reg.Handle("value", func(context.Context, effects.Effect) (any, error) { return map[string]string{"s": "<&>"}, nil })
	b := setup(t, testConfig(), reg)
	raw := make(chan []byte, 4)
	sub, err := b.js.Conn().Subscribe("effects.completed.>", func(m *nats.Msg) { raw <- m.Data })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	b.publish("echo", `{"s": "&&&<<<>>>"}`)
	b.publish("value", `{}`)
	for range 2 {
		select {
		case data := <-raw:
			if strings.Contains(string(data), `\u00`) || !strings.Contains(string(data), "&") {
				t.Fatalf("completion escaped: %s", data)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("no completion")
		}
	}
}

// Finding 1: http_request against a ~1 MiB response of characters JSON
// escapes: the default response cap keeps the completion publishable, and
// the target is called once.
func TestHTTPRequestLargeResponseRunsOnce(t *testing.T) {
	t.Parallel()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte(strings.Repeat(`<&>"`, 256<<10)))
	}))
	t.Cleanup(srv.Close)
	h, err := handlers.NewHTTPRequest(handlers.HTTPConfig{Allow: []string{strings.TrimPrefix(srv.URL, "http://")}})
	if err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	reg.Handle("http_request", h)
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("http_request", fmt.Sprintf(`{"url": %q, "method": "GET"}`, srv.URL))
	c := b.completion(id)
	if c.Status != effects.StatusSucceeded {
		t.Fatalf("completion %+v %v", c, *c.Error)
	}
	b.consumerSettled("http_request")
	if hits.Load() != 1 {
		t.Fatalf("target called %d times", hits.Load())
	}
}

// Finding 2: a RetryAfter longer than the kind's max retry delay waits the
// max retry delay.
func TestRetryAfterIsCapped(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("slowapi", func(context.Context, effects.Effect) (any, error) {
		if calls.Add(1) == 1 {
			return nil, effects.RetryAfter(time.Hour, errors.New("429"))
		}
		return "ok", nil
	}, effects.MaxRetryDelay(100*time.Millisecond))
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("slowapi", `{}`)
	if c := b.completion(id); c.Status != effects.StatusSucceeded || c.Attempts != 2 {
		t.Fatalf("completion %+v", c)
	}
}

// Finding 2: every delay is capped, and ends before the stream's retention
// would remove the effect; past that point the effect fails.
func TestDecideCapsDelays(t *testing.T) {
	now := time.Now()
	in := attemptInfo{effect: effects.Effect{ID: newID(), Kind: "k"}, attempt: 1, maxAttempts: 10,
		now: now, retryBase: time.Second, maxDelay: time.Minute}
	if o := decide(in, result{err: effects.RetryAfter(48*time.Hour, errors.New("later"))}); o.verdict != retried || o.delay != time.Minute {
		t.Fatalf("RetryAfter not capped: %+v", o)
	}
	in.attempt = 9
	if o := decide(in, result{err: errors.New("x")}); o.delay > time.Minute {
		t.Fatalf("backoff not capped: %+v", o)
	}
	in.retryBy = now.Add(10 * time.Second)
	if o := decide(in, result{err: effects.RetryAfter(time.Minute, errors.New("later"))}); o.verdict != retried || o.delay != 10*time.Second {
		t.Fatalf("delay past retention: %+v", o)
	}
	in.retryBy = now.Add(-time.Second)
	o := decide(in, result{err: errors.New("x")})
	if o.verdict != failed || !strings.Contains(errorText(o.err), "retention") {
		t.Fatalf("retry past retention: %+v", o)
	}
	// The stream's MaxAge caps the settings at start.
	cfg := Config{RetryMax: 2 * time.Hour, Streams: effects.StreamOptions{MaxAge: time.Hour}}.WithDefaults()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "EFFECTS_RETRY_MAX") {
		t.Fatalf("retry max past max age: %v", err)
	}
}

// Finding 4: a permanent failure is terminated for good on nats-server
// 2.9, which ignores "+TERM <reason>": it is neither redelivered nor left
// pending. Runs against Debian's 2.9.10 binary as a child process.
func TestTermOnNATS29(t *testing.T) {
	t.Parallel()
	bin := "/usr/sbin/nats-server"
	if env := os.Getenv("EFFECTS_TEST_NATS29"); env != "" {
		bin = env
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("this test needs nats-server 2.9 at %s (Debian's nats-server package; or set EFFECTS_TEST_NATS29): %v", bin, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	cmd := exec.Command(bin, "-js", "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-sd", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var nc *nats.Conn
	waitFor(t, "nats-server 2.9 up", func() bool {
		nc, err = nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port))
		return err == nil
	})
	t.Cleanup(nc.Close)
	if v := nc.ConnectedServerVersion(); !strings.HasPrefix(v, "2.9.") {
		t.Fatalf("server version %s, want 2.9.x", v)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("doomed", func(context.Context, effects.Effect) (any, error) {
		calls.Add(1)
		return nil, effects.Permanent(errors.New("no such rateset"))
	})
	_, _ = runOn(t, js, testConfig(), reg)
	msg := nats.NewMsg(effects.Subject("doomed"))
	msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":"doomed","payload":{}}`, newID())
	msg.Header.Set(jetstream.MsgIDHeader, "ev-doomed")
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	// Terminated means acknowledged: nothing pending for the consumer.
	waitFor(t, "the failed effect terminated (ack floor past it)", func() bool {
		cons, err := js.Consumer(context.Background(), effects.EffectsStream, ConsumerName("doomed"))
		if err != nil {
			return false
		}
		info, err := cons.Info(context.Background())
		return err == nil && info.AckFloor.Stream == 1 && info.NumAckPending == 0
	})
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times", calls.Load())
	}
}

// Finding 5: a kind whose durable consumer is deleted gets it back, and
// is not ready meanwhile; with the shared iterator and with the one-by-one
// fetch of a rate-limited kind.
func TestDeletedConsumerIsRecreated(t *testing.T) {
	t.Parallel()
	for _, limited := range []bool{false, true} {
		t.Run(fmt.Sprint("rate limited ", limited), func(t *testing.T) {
			t.Parallel()
			var opts []effects.HandlerOption
			if limited {
				opts = append(opts, effects.RateLimit(1000, time.Second))
			}
			reg := effects.NewRegistry()
			reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil }, opts...)
			b := setup(t, testConfig(), reg)
			id, _ := b.publish("echo", `{"n": 1}`)
			b.completion(id)
			if err := b.js.DeleteConsumer(context.Background(), effects.EffectsStream, ConsumerName("echo")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "consumer re-created", func() bool {
				return testenv.MetricValue(t, b.reg, "effects_consumer_recreated_total", "consumer", ConsumerName("echo")) == 1 &&
					b.d.Ready(context.Background()) == nil
			})
			id, _ = b.publish("echo", `{"n": 2}`)
			if c := b.completion(id); c.Status != effects.StatusSucceeded {
				t.Fatalf("completion %+v", c)
			}
		})
	}
}

// Readiness names the kind whose consumer is missing.
func TestReadyFalseWhileAKindIsDown(t *testing.T) {
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return nil, nil })
	d, err := New(Config{}, reg, nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	d.running.Store(true)
	if err := d.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "echo") {
		t.Fatalf("ready with a kind down: %v", err)
	}
}

// Finding 7: an async effect whose completion does not come by its
// deadline gets a new attempt.
func TestAsyncDeadlineGivesANewAttempt(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.HandleAsync("job", func(ctx context.Context, e effects.Effect, done effects.Done) error {
		if calls.Add(1) == 1 {
			return nil // the work is lost: done is never called
		}
		return done.Complete(ctx, "second")
	}, effects.CompletionDeadline(200*time.Millisecond))
	b := setup(t, testConfig(), reg)
	id, _ := b.publish("job", `{}`)
	c := b.completion(id)
	if c.Status != effects.StatusSucceeded || c.Attempts != 2 || string(c.Completion) != `"second"` {
		t.Fatalf("completion %+v", c)
	}
	b.consumerSettled("job")
}

// Finding 7: an async effect started by a dispatcher that then stops is
// taken over by another one at its deadline.
func TestAsyncEffectOutlivesItsDispatcher(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, jsA := srv.Connect(t)
	_, jsB := srv.Connect(t)
	_, js := srv.Connect(t)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{}, 1)
	regA := effects.NewRegistry()
	regA.HandleAsync("job", func(context.Context, effects.Effect, effects.Done) error {
		started <- struct{}{}
		return nil // its process goes away before the work completes
	}, effects.CompletionDeadline(300*time.Millisecond))
	second := make(chan effects.Effect, 1)
	regB := effects.NewRegistry()
	regB.HandleAsync("job", func(ctx context.Context, e effects.Effect, done effects.Done) error {
		second <- e
		return done.Complete(ctx, "taken over")
	}, effects.CompletionDeadline(300*time.Millisecond))
	_, stopA := runOn(t, jsA, testConfig(), regA)
	msg := nats.NewMsg(effects.Subject("job"))
	msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":"job","payload":{}}`, newID())
	msg.Header.Set(jetstream.MsgIDHeader, "ev-job")
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	<-started
	stopA()
	runOn(t, jsB, testConfig(), regB)
	select {
	case e := <-second:
		if e.Attempt != 2 {
			t.Fatalf("attempt %d", e.Attempt)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the effect was not taken over")
	}
}

// Finding 7: an async effect whose dispatcher dies (its connection gone,
// no graceful stop) is redelivered once the ack wait passes, to another
// dispatcher, as a new attempt: the held message was never acked.
func TestAsyncEffectSurvivesACrash(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	ncA, jsA := srv.Connect(t)
	_, jsB := srv.Connect(t)
	_, js := srv.Connect(t)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.HandlerTimeout = time.Second
	cfg.AckWait = time.Second + AckWaitMargin // the shortest allowed
	started := make(chan struct{}, 1)
	regA := effects.NewRegistry()
	regA.HandleAsync("job", func(context.Context, effects.Effect, effects.Done) error {
		started <- struct{}{}
		return nil
	})
	second := make(chan int, 1)
	regB := effects.NewRegistry()
	regB.HandleAsync("job", func(ctx context.Context, e effects.Effect, done effects.Done) error {
		second <- e.Attempt
		return done.Complete(ctx, "after the crash")
	})
	runOn(t, jsA, cfg, regA)
	msg := nats.NewMsg(effects.Subject("job"))
	msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":"job","payload":{}}`, newID())
	msg.Header.Set(jetstream.MsgIDHeader, "ev-crash")
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	<-started
	ncA.Close() // the process is gone: no keep-alive, no nak
	runOn(t, jsB, cfg, regB)
	select {
	case attempt := <-second:
		if attempt != 2 {
			t.Fatalf("attempt %d", attempt)
		}
	case <-time.After(cfg.AckWait + 15*time.Second):
		t.Fatal("the effect of the crashed dispatcher was not redelivered")
	}
}

// Per-kind concurrency from registration, overridden by the environment.
func TestKindConcurrency(t *testing.T) {
	t.Parallel()
	var running, most atomic.Int32
	gate := make(chan struct{})
	reg := effects.NewRegistry()
	reg.Handle("one", func(context.Context, effects.Effect) (any, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-gate
		return "ok", nil
	}, effects.Concurrency(8))
	cfg := testConfig()
	cfg.KindConcurrency = map[string]int{"one": 2}
	b := setup(t, cfg, reg)
	ids := []string{}
	for range 5 {
		id, _ := b.publish("one", `{}`)
		ids = append(ids, id)
	}
	waitFor(t, "two running", func() bool { return running.Load() == 2 })
	b.noCompletion(100 * time.Millisecond)
	if most.Load() != 2 {
		t.Fatalf("%d ran at once", most.Load())
	}
	close(gate)
	for range ids {
		select {
		case <-b.comps:
		case <-time.After(15 * time.Second):
			t.Fatal("missing completions")
		}
	}
	if most.Load() != 2 {
		t.Fatalf("%d ran at once", most.Load())
	}
}

// A kind's rate limit holds across dispatcher processes: two dispatchers
// on their own connections share one budget.
func TestRateLimitHoldsAcrossDispatchers(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	const n = 16
	const interval = 50 * time.Millisecond // 20/s
	var mu sync.Mutex
	var starts []time.Time
	by := map[string]int{}
	all := make(chan struct{})
	mk := func(name string) *effects.Registry {
		reg := effects.NewRegistry()
		reg.Handle("sms", func(context.Context, effects.Effect) (any, error) {
			mu.Lock()
			defer mu.Unlock()
			starts = append(starts, time.Now())
			by[name]++
			if len(starts) == n {
				close(all)
			}
			return "sent", nil
		})
		return reg
	}
	cfg := testConfig()
	cfg.KindRate = map[string]effects.Rate{"sms": {N: 20, Per: time.Second}}
	_, jsA := srv.Connect(t)
	_, jsB := srv.Connect(t)
	runOn(t, jsA, cfg, mk("a"))
	runOn(t, jsB, cfg, mk("b"))
	for i := range n {
		msg := nats.NewMsg(effects.Subject("sms"))
		msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":"sms","payload":{}}`, newID())
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprint("ev-sms-", i))
		if _, err := js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		t.Fatal("not all effects handled")
	}
	mu.Lock()
	defer mu.Unlock()
	if by["a"] == 0 || by["b"] == 0 {
		t.Fatalf("one dispatcher did all the work: %v", by)
	}
	// n attempts at 20/s take at least (n-1) intervals, whoever runs them;
	// two per-process limits would take about half. 10% slack for clocks.
	first, last := starts[0], starts[0]
	for _, s := range starts {
		if s.Before(first) {
			first = s
		}
		if s.After(last) {
			last = s
		}
	}
	if span, want := last.Sub(first), (n-1)*interval*9/10; span < want {
		t.Fatalf("%d attempts within %s, want at least %s at 20/s (per dispatcher: %v)", n, span, want, by)
	}
}

func TestParseKindSettings(t *testing.T) {
	c, err := ParseKindConcurrency(" send_email=5, http_request=50 ")
	if err != nil || c["send_email"] != 5 || c["http_request"] != 50 {
		t.Fatalf("%v %v", c, err)
	}
	r, err := ParseKindRate("send_email=10/s,sms=600/m,report=2/h")
	if err != nil || r["send_email"] != (effects.Rate{N: 10, Per: time.Second}) || r["sms"].Interval() != 100*time.Millisecond || r["report"].Per != time.Hour {
		t.Fatalf("%v %v", r, err)
	}
	for in, want := range map[string]string{
		"send_email":      `"send_email": want kind=value`,
		"send_email=0":    `send_email="0": want a whole number of at least 1`,
		"a=1,a=2":         `kind "a" is listed twice`,
		"bad.kind=1":      `"bad.kind=1"`,
		"send_email=five": `send_email="five"`,
	} {
		if _, err := ParseKindConcurrency(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %s", in, err, want)
		}
	}
	for in, want := range map[string]string{
		"sms=10":   "want <count>/<unit>",
		"sms=10/d": `unit "d": want s, m or h`,
		"sms=0/s":  "a count of at least 1",
		"sms=-1/s": "a count of at least 1",
	} {
		if _, err := ParseKindRate(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %s", in, err, want)
		}
	}
	// A kind the environment names must have a handler.
	reg := effects.NewRegistry()
	reg.Handle("echo", func(context.Context, effects.Effect) (any, error) { return nil, nil })
	if _, err := New(Config{KindRate: map[string]effects.Rate{"sms": {N: 1, Per: time.Second}}}, reg, nil, nil, prometheus.NewRegistry()); err == nil || !strings.Contains(err.Error(), `EFFECTS_KIND_RATE names kind "sms"`) {
		t.Fatalf("unknown kind: %v", err)
	}
}

var _ = json.Valid

// A kind's limits: the environment over the registration over the
// defaults.
func TestKindLimitsPrecedence(t *testing.T) {
	cfg := Config{
		KindConcurrency: map[string]int{"sms": 3},
		KindRate:        map[string]effects.Rate{"sms": {N: 600, Per: time.Minute}},
	}.WithDefaults()
	opts := effects.KindOptions{Concurrency: 7, Rate: effects.Rate{N: 1, Per: time.Second}, AttemptTimeout: 2 * time.Minute,
		MaxAttempts: 4, MaxRetryDelay: time.Minute, CompletionDeadline: 3 * time.Hour}
	l, err := cfg.limitsFor("sms", opts)
	if err != nil {
		t.Fatal(err)
	}
	want := kindLimits{concurrency: 3, rate: effects.Rate{N: 600, Per: time.Minute}, timeout: 2 * time.Minute, maxAttempts: 4,
		maxRetryDelay: time.Minute, completionDeadline: 3 * time.Hour, ackWait: 2*time.Minute + 30*time.Second}
	if l != want {
		t.Fatalf("sms limits %+v, want %+v", l, want)
	}
	l, err = cfg.limitsFor("email", effects.KindOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want = kindLimits{concurrency: 100, timeout: time.Minute, maxAttempts: 10, maxRetryDelay: 5 * time.Minute,
		completionDeadline: time.Hour, ackWait: 90 * time.Second}
	if l != want {
		t.Fatalf("default limits %+v, want %+v", l, want)
	}
	// A kind's timeout longer than an explicit ack wait allows is refused.
	cfg.AckWait = time.Minute
	if _, err := cfg.limitsFor("slow", effects.KindOptions{AttemptTimeout: time.Hour}); err == nil || !strings.Contains(err.Error(), "EFFECTS_ACK_WAIT") {
		t.Fatalf("ack wait below the kind's timeout: %v", err)
	}
}

// Finding 5: readiness is false for as long as a kind's consumer cannot be
// created again (here: its stream was deleted too), and true once it is
// back.
func TestNotReadyUntilTheConsumerIsBack(t *testing.T) {
	t.Parallel()
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	b := setup(t, testConfig(), reg)
	if err := b.js.DeleteStream(context.Background(), effects.EffectsStream); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "not ready", func() bool {
		err := b.d.Ready(context.Background())
		return err != nil && strings.Contains(err.Error(), "kind echo")
	})
	for range 3 { // and it stays so while the consumer cannot be made
		time.Sleep(50 * time.Millisecond)
		if b.d.Ready(context.Background()) == nil {
			t.Fatal("ready without a consumer")
		}
	}
	if err := effects.EnsureStreams(context.Background(), b.js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ready again", func() bool { return b.d.Ready(context.Background()) == nil })
	id, _ := b.publish("echo", `{"back": true}`)
	if c := b.completion(id); c.Status != effects.StatusSucceeded {
		t.Fatalf("completion %+v", c)
	}
}
