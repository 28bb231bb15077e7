package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/effects-run/effects/internal/controlkv/controlkvtest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// selector is the variable that makes the test binary run main().
const selector = "EFFECTS_DISPATCHER_TEST_MAIN"

// The tests run this test binary as the command: with
// EFFECTS_DISPATCHER_TEST_MAIN set it runs main() instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv(selector) == "1" {
		os.Args = []string{"dispatcher"}
		main()
		os.Exit(0) // main returned: the service ran and stopped
	}
	goleak.VerifyTestMain(m)
}

// builtins are the kinds cmd/dispatcher handles.
var builtins = []string{"echo", "http_request"}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	// Nothing listens on NATS_URL: a configuration error stops the
	// dispatcher before it connects.
	base := map[string]string{"NATS_URL": "nats://127.0.0.1:1", "EFFECTS_ADMIN_ADDR": "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"concurrency not a number", map[string]string{"EFFECTS_CONCURRENCY": "abc"}, "EFFECTS_CONCURRENCY"},
		{"concurrency negative", map[string]string{"EFFECTS_CONCURRENCY": "-1"}, "EFFECTS_CONCURRENCY"},
		{"allow list with a URL", map[string]string{"EFFECTS_HTTP_ALLOW": "http://x"}, "EFFECTS_HTTP_ALLOW"},
		{"allow list with a path", map[string]string{"EFFECTS_HTTP_ALLOW": "example.com,x/y"}, "EFFECTS_HTTP_ALLOW"},
		{"retry max below base", map[string]string{"EFFECTS_RETRY_BASE": "2s", "EFFECTS_RETRY_MAX": "1s"}, "EFFECTS_RETRY_MAX"},
		{"bad handler timeout", map[string]string{"EFFECTS_HANDLER_TIMEOUT": "long"}, "EFFECTS_HANDLER_TIMEOUT"},
		{"bad duplicate window", map[string]string{"EFFECTS_DUPLICATE_WINDOW": "2 minutes"}, "EFFECTS_DUPLICATE_WINDOW"},
		{"kind concurrency not a number", map[string]string{"EFFECTS_KIND_CONCURRENCY": "echo=many"}, `EFFECTS_KIND_CONCURRENCY: echo="many"`},
		{"kind rate without a unit", map[string]string{"EFFECTS_KIND_RATE": "http_request=10"}, "EFFECTS_KIND_RATE"},
		{"kind rate for a kind without handler", map[string]string{"EFFECTS_KIND_RATE": "sms=10/s"}, `EFFECTS_KIND_RATE names kind "sms"`},
		{"unknown traces exporter", map[string]string{"OTEL_TRACES_EXPORTER": "carrier-pigeon"}, "OTEL_TRACES_EXPORTER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := testenv.StartProcess(t, selector, testenv.MergeEnv(base, tc.env))
			if code := p.Wait(t); code != 2 {
				t.Fatalf("exit %d, want 2\n%s", code, p.Output())
			}
			l := p.FindLog(t, "dispatcher", "configuration")
			if l == nil || !strings.Contains(fmt.Sprint(l["error"]), tc.want) {
				t.Errorf("no \"configuration\" line naming %s\n%s", tc.want, p.Output())
			}
		})
	}
}

// TestDispatchesAndStops runs the dispatcher, has it handle an effect, stops
// it, and runs it again: the durable consumers outlive every stop, and an
// effect handled before a stop is not handled again.
func TestDispatchesAndStops(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)
	env := map[string]string{"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_LOG_LEVEL": "debug"}

	p := testenv.StartProcess(t, selector, env) // EFFECTS_HTTP_ALLOW unset: allowed
	admin := "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
	waitReady(t, p, admin)
	for _, kind := range builtins {
		ci := consumerInfo(t, js, kind)
		if ci == nil || ci.Config.Durable != dispatcher.ConsumerName(kind) || ci.Config.AckPolicy != jetstream.AckExplicitPolicy ||
			ci.Config.FilterSubject != effects.Subject(kind) {
			t.Errorf("consumer of %s: %+v, want a durable one with explicit acks on %s", kind, ci, effects.Subject(kind))
		}
	}

	first := publishEcho(t, js, `{"a":1}`)
	checkCompletion(t, p, js, first, `{"a":1}`, 1)
	waitMetric(t, p, admin, `effects_handled_total{kind="echo",outcome="succeeded"} 1`)

	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	if p.FindLog(t, "dispatcher", "stopped") == nil {
		t.Errorf("no \"stopped\" line\n%s", p.Output())
	}
	for _, kind := range builtins {
		if consumerInfo(t, js, kind) == nil {
			t.Errorf("consumer %s was deleted by the stop", dispatcher.ConsumerName(kind))
		}
	}
	waitAcked(t, js, "echo", first.seq)

	// Again: the consumers are reused, the acked effect stays handled.
	p = testenv.StartProcess(t, selector, env)
	admin = "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
	waitReady(t, p, admin)
	second := publishEcho(t, js, `{"b":[true,null]}`)
	checkCompletion(t, p, js, second, `{"b":[true,null]}`, 1)
	waitMetric(t, p, admin, `effects_handled_total{kind="echo",outcome="succeeded"} 1`)
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("second run: exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	for _, kind := range builtins {
		if consumerInfo(t, js, kind) == nil {
			t.Errorf("consumer %s was deleted by the second stop", dispatcher.ConsumerName(kind))
		}
	}
	waitAcked(t, js, "echo", second.seq)
}

// TestShutdownLetsWorkFinish stops the dispatcher while an http_request is
// running: it finishes within EFFECTS_SHUTDOWN_TIMEOUT and completes.
func TestShutdownLetsWorkFinish(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)
	target := newBlockingServer(t)
	p := testenv.StartProcess(t, selector, map[string]string{
		"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_HTTP_ALLOW": "127.0.0.1",
	})
	waitReady(t, p, "http://"+p.LoopbackAddr(t, "starting", "admin_addr"))
	eff := publishHTTPRequest(t, js, target.URL)
	target.waitRequest(t, p)

	p.Signal(t, syscall.SIGTERM)
	p.WaitFor(t, `the "stopping" line`, func() bool { return p.HasLog("stopping") })
	target.unblock()
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	comp := lastCompletion(t, js, "http_request")
	if comp == nil || comp.EffectID != eff.id || comp.Status != effects.StatusSucceeded || comp.Attempts != 1 {
		t.Fatalf("completion %+v, want effect %s succeeded after 1 attempt\n%s", comp, eff.id, p.Output())
	}
	waitAcked(t, js, "http_request", eff.seq)
}

// TestShutdownTimeoutReturnsWork stops the dispatcher while an http_request
// runs past EFFECTS_SHUTDOWN_TIMEOUT: it is interrupted and goes back to the
// stream, not failed, and the next dispatcher completes it.
func TestShutdownTimeoutReturnsWork(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)
	target := newBlockingServer(t)
	env := map[string]string{
		"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_HTTP_ALLOW": "127.0.0.1",
		// Longer than the test waits: the interrupted effect must be given
		// back at once, not redelivered once its ack wait ran out.
		"EFFECTS_SHUTDOWN_TIMEOUT": "200ms", "EFFECTS_ACK_WAIT": "5m",
	}
	p := testenv.StartProcess(t, selector, env)
	waitReady(t, p, "http://"+p.LoopbackAddr(t, "starting", "admin_addr"))
	eff := publishHTTPRequest(t, js, target.URL)
	target.waitRequest(t, p)

	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	if comp := lastCompletion(t, js, "http_request"); comp != nil {
		t.Fatalf("an interrupted effect was completed: %+v\n%s", comp, p.Output())
	}

	target.unblock()
	p = testenv.StartProcess(t, selector, env)
	waitReady(t, p, "http://"+p.LoopbackAddr(t, "starting", "admin_addr"))
	var comp *effects.Completion
	p.WaitFor(t, "the http_request completion", func() bool {
		comp = lastCompletion(t, js, "http_request")
		return comp != nil
	})
	// The interrupted attempt counts as a delivery, but did not fail.
	if comp.EffectID != eff.id || comp.Status != effects.StatusSucceeded || comp.Attempts != 2 {
		t.Errorf("completion %+v, want effect %s succeeded at delivery 2", comp, eff.id)
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("second run: exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// TestStartsBeforeNATS starts the dispatcher while NATS is down: not ready
// until NATS is up, then dispatching.
func TestStartsBeforeNATS(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	n.Shutdown()
	p := testenv.StartProcess(t, selector, map[string]string{"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0"})
	admin := "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
	if code, body := testenv.HTTPGet(t, admin+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz without NATS: %d %s, want 503", code, body)
	}
	n.Restart(t)
	waitReady(t, p, admin)
	_, js := n.Connect(t)
	eff := publishEcho(t, js, `{}`)
	checkCompletion(t, p, js, eff, `{}`, 1)
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// TestStopsBeforeNATS stops the dispatcher before it ever reached NATS: a
// stop, not a failure.
func TestStopsBeforeNATS(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	n.Shutdown()
	p := testenv.StartProcess(t, selector, map[string]string{"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0"})
	admin := "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
	if code, body := testenv.HTTPGet(t, admin+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz without NATS: %d %s, want 503", code, body)
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
}

// published is an effect the test put on the stream.
type published struct {
	id  string
	seq uint64
}

func publishEcho(t *testing.T, js jetstream.JetStream, payload string) published {
	t.Helper()
	return publishEffect(t, js, "echo", payload)
}

func publishHTTPRequest(t *testing.T, js jetstream.JetStream, url string) published {
	t.Helper()
	return publishEffect(t, js, "http_request", fmt.Sprintf(`{"url":%q,"method":"POST","body":{"x":1},"timeout_ms":60000}`, url))
}

// publishEffect publishes an effect the way the ingest does.
func publishEffect(t *testing.T, js jetstream.JetStream, kind, payload string) published {
	t.Helper()
	id := newUUID(t)
	msg := nats.NewMsg(effects.Subject(kind))
	msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":%q,"payload":%s,"created_at":%q,"session_variables":null}`,
		id, kind, payload, time.Now().UTC().Format(time.RFC3339))
	msg.Header.Set(jetstream.MsgIDHeader, newUUID(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		t.Fatalf("publish %s: %v", kind, err)
	}
	return published{id: id, seq: ack.Sequence}
}

// checkCompletion waits for the succeeded completion of eff on
// effects.completed.echo.
func checkCompletion(t *testing.T, p *testenv.Process, js jetstream.JetStream, eff published, completion string, attempts int) {
	t.Helper()
	var comp *effects.Completion
	p.WaitFor(t, "the completion of "+eff.id, func() bool {
		comp = lastCompletion(t, js, "echo")
		return comp != nil && comp.EffectID == eff.id
	})
	if comp.Kind != "echo" || comp.Status != effects.StatusSucceeded || string(comp.Completion) != completion ||
		comp.Error != nil || comp.Attempts != attempts || comp.CompletedAt.IsZero() {
		t.Errorf("completion %+v (%s), want echo succeeded with %s after %d attempts", comp, comp.Completion, completion, attempts)
	}
}

// lastCompletion is the last message on effects.completed.<kind>, or nil.
func lastCompletion(t *testing.T, js jetstream.JetStream, kind string) *effects.Completion {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, effects.CompletedStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	} else if err != nil {
		t.Fatalf("stream %s: %v", effects.CompletedStream, err)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, effects.CompletedSubject(kind))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	} else if err != nil {
		t.Fatalf("last message on %s: %v", effects.CompletedSubject(kind), err)
	}
	comp, err := effects.ParseCompletion(msg.Data)
	if err != nil {
		t.Fatalf("completion %s: %v", msg.Data, err)
	}
	return &comp
}

// consumerInfo is the dispatcher's consumer of kind, or nil when there is
// none.
func consumerInfo(t *testing.T, js jetstream.JetStream, kind string) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, effects.EffectsStream, dispatcher.ConsumerName(kind))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	} else if err != nil {
		t.Fatalf("consumer %s: %v", dispatcher.ConsumerName(kind), err)
	}
	return c.CachedInfo()
}

// waitAcked waits until the consumer of kind has acked the stream up to seq
// and has nothing outstanding.
func waitAcked(t *testing.T, js jetstream.JetStream, kind string, seq uint64) {
	t.Helper()
	deadline := time.Now().Add(testenv.ProcessTimeout)
	for {
		ci := consumerInfo(t, js, kind)
		if ci != nil && ci.AckFloor.Stream >= seq && ci.NumAckPending == 0 && ci.NumPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s: not acked up to %d in %s: %+v", dispatcher.ConsumerName(kind), seq, testenv.ProcessTimeout, ci)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitMetric(t *testing.T, p *testenv.Process, admin, line string) {
	t.Helper()
	var metrics string
	p.WaitFor(t, "/metrics with "+line, func() bool {
		_, metrics = testenv.HTTPGet(t, admin+"/metrics")
		return strings.Contains(metrics, line+"\n")
	})
}

// waitReady polls /readyz until it answers 200.
func waitReady(t *testing.T, p *testenv.Process, admin string) {
	t.Helper()
	p.WaitFor(t, "/readyz 200", func() bool {
		code, _ := testenv.HTTPGet(t, admin+"/readyz")
		return code == http.StatusOK
	})
}

// blockingServer is a target for http_request that holds every request
// until it is released.
type blockingServer struct {
	*httptest.Server
	requests    chan struct{}
	release     chan struct{}
	releaseOnce sync.Once
}

func newBlockingServer(t *testing.T) *blockingServer {
	t.Helper()
	s := &blockingServer{requests: make(chan struct{}, 16), release: make(chan struct{})}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Reading the body to its end lets the server notice a client
		// that hangs up, which ends r.Context().
		_, _ = io.Copy(io.Discard, r.Body)
		s.requests <- struct{}{}
		select {
		case <-s.release:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"ok":true}`)
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(s.Close)
	t.Cleanup(s.unblock) // before Close, which waits for the handlers
	return s
}

// unblock lets every request held, and every later one, be answered.
func (s *blockingServer) unblock() { s.releaseOnce.Do(func() { close(s.release) }) }

func (s *blockingServer) waitRequest(t *testing.T, p *testenv.Process) {
	t.Helper()
	select {
	case <-s.requests:
	case <-p.Done():
		t.Fatalf("exited (%v) before the request arrived\n%s", p.Err(), p.Output())
	case <-time.After(testenv.ProcessTimeout):
		t.Fatalf("no request in %s\n%s", testenv.ProcessTimeout, p.Output())
	}
}

func newUUID(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// TestRateLimitAcrossProcesses runs two dispatcher processes with
// EFFECTS_KIND_RATE=http_request=10/s against one NATS: together they start
// at most 10 requests a second, and both take part.
func TestRateLimitAcrossProcesses(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)
	const effectsN = 12
	const interval = 100 * time.Millisecond
	var mu sync.Mutex
	var arrivals []time.Time
	all := make(chan struct{})
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		if len(arrivals) == effectsN {
			close(all)
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(target.Close)
	env := map[string]string{
		"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_HTTP_ALLOW": "127.0.0.1",
		"EFFECTS_KIND_RATE": "http_request=10/s",
	}
	procs := []*testenv.Process{testenv.StartProcess(t, selector, env), testenv.StartProcess(t, selector, env)}
	admins := make([]string, len(procs))
	for i, p := range procs {
		admins[i] = "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
		waitReady(t, p, admins[i])
	}
	for range effectsN {
		publishHTTPRequest(t, js, target.URL)
	}
	select {
	case <-all:
	case <-time.After(testenv.ProcessTimeout):
		t.Fatalf("%d requests in %s, want %d", len(arrivals), testenv.ProcessTimeout, effectsN)
	}
	for i, p := range procs {
		_, metrics := testenv.HTTPGet(t, admins[i]+"/metrics")
		if strings.Contains(metrics, `effects_handled_total{kind="http_request",outcome="succeeded"} 0`+"\n") {
			t.Errorf("dispatcher %d handled no http_request\n%s", i, p.Output())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// 12 starts at 10/s span at least 11 intervals, whichever process runs
	// them (10% slack for scheduling); a limit per process would allow 20/s.
	if span, want := arrivals[len(arrivals)-1].Sub(arrivals[0]), (effectsN-1)*interval*9/10; span < want {
		t.Fatalf("%d requests within %s, want at least %s at 10/s", effectsN, span, want)
	}
	for _, p := range procs {
		p.Signal(t, syscall.SIGTERM)
		if code := p.Wait(t); code != 0 {
			t.Fatalf("exit %d\n%s", code, p.Output())
		}
	}
}
