package dispatcher

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/consume"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// The tests of issue 17's defects 1–3: a kind's consumer lost (deleted by
// hand, or with the server's store) must not run its effects again, and a
// consumer the server did not store must not keep a dispatcher from
// starting. The handler counts its calls per effect id.

type recovery struct {
	t     *testing.T
	nats  *testenv.NATS
	js    jetstream.JetStream // the dispatcher's
	admin jetstream.JetStream // the operator's and the producer's
	calls counter
	comps chan effects.Completion
	reg   *effects.Registry
}

// counter counts a handler's calls per effect id.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) handle(_ context.Context, e effects.Effect) (any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[e.ID]++
	return "done", nil
}

// more lists the ids of ids called other than once.
func (c *counter) notOnce(ids []string) map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for _, id := range ids {
		if c.n[id] != 1 {
			out[id] = c.n[id]
		}
	}
	return out
}

func newRecovery(t *testing.T, limited bool) *recovery {
	t.Helper()
	r := &recovery{t: t, nats: testenv.StartNATS(t), comps: make(chan effects.Completion, 1000)}
	r.calls.n = map[string]int{}
	_, r.js = r.nats.Connect(t)
	_, r.admin = r.nats.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, r.admin, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	cons, err := r.admin.OrderedConsumer(ctx, effects.CompletedStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if c, err := effects.ParseCompletion(m.Data()); err == nil {
			r.comps <- c
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	var opts []effects.HandlerOption
	if limited {
		opts = append(opts, effects.RateLimit(1000, time.Second))
	}
	r.reg = effects.NewRegistry()
	r.reg.Handle("k", r.calls.handle, opts...)
	return r
}

// publish stores n effects of kind k and returns their ids.
func (r *recovery) publish(n int) []string {
	r.t.Helper()
	var ids []string
	for range n {
		id := newID()
		msg := nats.NewMsg(effects.Subject("k"))
		msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":"k","payload":{}}`, id)
		msg.Header.Set(jetstream.MsgIDHeader, "ev-"+id)
		if _, err := r.admin.PublishMsg(context.Background(), msg); err != nil {
			r.t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// completed waits for a completion of each id.
func (r *recovery) completed(ids []string) {
	r.t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	timeout := time.After(30 * time.Second)
	for len(want) > 0 {
		select {
		case c := <-r.comps:
			delete(want, c.EffectID)
		case <-timeout:
			r.t.Fatalf("%d of %d effects not completed in 30s", len(want), len(ids))
		}
	}
}

// runOnce checks that each of ids ran exactly once.
func (r *recovery) runOnce(ids []string) {
	r.t.Helper()
	if bad := r.calls.notOnce(ids); len(bad) > 0 {
		r.t.Fatalf("%d of %d effects did not run exactly once (id: calls): %v", len(bad), len(ids), bad)
	}
}

// lose waits until every effect handled so far is acked (the dispatcher
// had time to read the ack floor), runs loseIt, waits until the kind is
// ready again, and checks that none of done ran again while a new effect
// runs once.
func (r *recovery) lose(d *Dispatcher, done []string, loseIt func()) {
	r.t.Helper()
	settledAll(r.t, r.admin, ConsumerName("k"))
	loseIt()
	testenv.WaitFor(r.t, 30*time.Second, "the consumer back and the kind ready", func() bool {
		_, err := r.admin.Consumer(context.Background(), effects.EffectsStream, ConsumerName("k"))
		return err == nil && d.Ready(context.Background()) == nil
	})
	fresh := r.publish(1)
	r.completed(fresh)
	// A replay of the whole stream would have run before the new effect
	// (stream order); give a straggler a moment anyway.
	time.Sleep(500 * time.Millisecond)
	r.runOnce(append(done, fresh...))
}

// Defect 1: a kind's consumer deleted by hand after its effects ran was
// created again with DeliverAll, and every effect of the stream ran again.
func TestDeletedConsumerDoesNotRunEffectsAgain(t *testing.T) {
	t.Parallel()
	for _, limited := range []bool{false, true} {
		t.Run(fmt.Sprint("rate limited ", limited), func(t *testing.T) {
			t.Parallel()
			r := newRecovery(t, limited)
			d, _ := runOn(t, r.js, testConfig(), r.reg)
			ids := r.publish(100)
			r.completed(ids)
			r.lose(d, ids, func() {
				if err := r.admin.DeleteConsumer(context.Background(), effects.EffectsStream, ConsumerName("k")); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

// Defect 3: a consumer lost with the server's store (gone after a
// restart) was created again with DeliverAll.
func TestConsumerLostInANATSRestartDoesNotRunEffectsAgain(t *testing.T) {
	t.Parallel()
	r := newRecovery(t, false)
	d, _ := runOn(t, r.js, testConfig(), r.reg)
	ids := r.publish(100)
	r.completed(ids)
	r.lose(d, ids, func() {
		r.nats.Shutdown()
		r.nats.LoseConsumerStore(t, effects.EffectsStream, ConsumerName("k"))
		r.nats.Start(t)
	})
}

// Defect 2, then 3: a consumer the server holds without its directory (what
// a consumer created again at once after a delete could be left as) made
// every create-or-update fail with err_code 10012, so a dispatcher
// restarted on it never became ready. It starts now, binding without a
// write; and when the next server restart loses that consumer, it is
// created again where it was.
func TestDispatcherStartsOnAConsumerTheServerDidNotStore(t *testing.T) {
	t.Parallel()
	r := newRecovery(t, false)
	_, stop := runOn(t, r.js, testConfig(), r.reg)
	ids := r.publish(20)
	r.completed(ids)
	info := settledAll(t, r.admin, ConsumerName("k"))
	stop()

	d, err := New(testConfig(), r.reg, r.js, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cc := d.execs[0].consumerConfig()
	cc.DeliverPolicy, cc.OptStartSeq = jetstream.DeliverByStartSequencePolicy, info.AckFloor.Stream+1
	testenv.LeaveConsumerUnstored(t, r.nats, r.admin, effects.EffectsStream, cc)
	if r.nats.ConsumerStored(effects.EffectsStream, ConsumerName("k")) {
		t.Fatal("the consumer is stored")
	}

	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = d.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	testenv.WaitFor(t, 20*time.Second, "the restarted dispatcher ready", func() bool { return d.Ready(ctx) == nil })
	more := r.publish(5)
	r.completed(more)
	ids = append(ids, more...)
	r.runOnce(ids)

	r.lose(d, ids, func() { r.nats.Restart(t) })
	if !r.nats.ConsumerStored(effects.EffectsStream, ConsumerName("k")) {
		t.Fatal("the consumer created again after the restart is not stored")
	}
}

// publishKind stores n effects of kind and returns their ids.
func (r *recovery) publishKind(kind string, n int) []string {
	r.t.Helper()
	var ids []string
	for range n {
		id := newID()
		msg := nats.NewMsg(effects.Subject(kind))
		msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":%q,"payload":{}}`, id, kind)
		msg.Header.Set(jetstream.MsgIDHeader, "ev-"+id)
		if _, err := r.admin.PublishMsg(context.Background(), msg); err != nil {
			r.t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// The gap the consumers' position bucket closes: a kind's consumer lost
// while no dispatcher runs (deleted by hand during a deploy, or lost with
// the server's store while everything was restarted) could not be told from
// a new one, and the next dispatcher created it with DeliverAll: every
// effect of the kind the stream held ran again. It resumes after the ack
// floor the stopped dispatcher recorded: the effects that ran do not run
// again, those published while it was down run once.
func TestConsumerLostWhileNoDispatcherRunsDoesNotRunEffectsAgain(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		lose func(r *recovery)
	}{
		{"deleted by hand", func(r *recovery) {
			if err := r.admin.DeleteConsumer(context.Background(), effects.EffectsStream, ConsumerName("k")); err != nil {
				r.t.Fatal(err)
			}
		}},
		{"lost with the server's store", func(r *recovery) {
			r.nats.Shutdown()
			r.nats.LoseConsumerStore(r.t, effects.EffectsStream, ConsumerName("k"))
			r.nats.Start(r.t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRecovery(t, false)
			_, stop := runOn(t, r.js, testConfig(), r.reg)
			ids := r.publish(100)
			r.completed(ids)
			floor := settledAll(t, r.admin, ConsumerName("k")).AckFloor.Stream
			stop()
			tc.lose(r)
			if _, err := r.admin.Consumer(context.Background(), effects.EffectsStream, ConsumerName("k")); err == nil {
				t.Fatal("the consumer is still there")
			}
			whileDown := r.publish(10)

			runOn(t, r.js, testConfig(), r.reg)
			r.completed(whileDown)
			// Everything delivered and settled: a replay (stream order:
			// before the effects published while down) would have run.
			info := settledAll(t, r.admin, ConsumerName("k"))
			if info.Config.DeliverPolicy != jetstream.DeliverByStartSequencePolicy || info.Config.OptStartSeq != floor+1 {
				t.Errorf("created with %s at %d; want by start sequence after the recorded floor, at %d", info.Config.DeliverPolicy, info.Config.OptStartSeq, floor+1)
			}
			r.runOnce(append(ids, whileDown...))
		})
	}
}

// A kind new to the dispatcher has never run: its consumer starts at the
// beginning of the stream, and every effect of it published before any
// dispatcher handled the kind runs (once), while the kinds that ran before
// are not run again.
func TestNewKindStartsFromTheBeginningOfTheStream(t *testing.T) {
	t.Parallel()
	r := newRecovery(t, false)
	early := r.publishKind("k2", 20) // before any consumer of k2
	_, stop := runOn(t, r.js, testConfig(), r.reg)
	ids := r.publish(50)
	r.completed(ids)
	settledAll(t, r.admin, ConsumerName("k"))
	stop()
	later := r.publishKind("k2", 5)

	r.reg.Handle("k2", r.calls.handle)
	runOn(t, r.js, testConfig(), r.reg)
	r.completed(append(early, later...))
	info := settledAll(t, r.admin, ConsumerName("k2"))
	if info.Config.DeliverPolicy != jetstream.DeliverAllPolicy {
		t.Errorf("the new kind's consumer: %s, want all", info.Config.DeliverPolicy)
	}
	settledAll(t, r.admin, ConsumerName("k"))
	r.runOnce(append(append(ids, early...), later...))
}

// The position bucket deleted with the consumer while no dispatcher runs:
// whether the consumer existed cannot be told, and the kind starts as new
// (as before the bucket existed), but the dispatcher starts, says so, and
// runs the kind's effects; the bucket is there again.
func TestPositionBucketDeletedDoesNotStallTheDispatcher(t *testing.T) {
	t.Parallel()
	r := newRecovery(t, false)
	_, stop := runOn(t, r.js, testConfig(), r.reg)
	ids := r.publish(10)
	r.completed(ids)
	settledAll(t, r.admin, ConsumerName("k"))
	stop()
	if err := r.admin.DeleteKeyValue(context.Background(), consume.PositionBucket); err != nil {
		t.Fatal(err)
	}
	if err := r.admin.DeleteConsumer(context.Background(), effects.EffectsStream, ConsumerName("k")); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	runLogged(t, r.js, testConfig(), r.reg, slog.New(slog.NewTextHandler(logs, nil)))
	fresh := r.publish(5)
	r.completed(fresh)
	if !strings.Contains(logs.String(), "without knowing whether it existed") {
		t.Errorf("no warning that the consumer's position was missing:\n%s", logs)
	}
	if _, err := r.admin.KeyValue(context.Background(), consume.PositionBucket); err != nil {
		t.Errorf("the position bucket: %v, want it created again", err)
	}
}
