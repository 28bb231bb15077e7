package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/testenv"
)

const stream = "S"

type bundle struct {
	t     *testing.T
	nats  *testenv.NATS
	js    jetstream.JetStream // the readers'
	admin jetstream.JetStream // the operator's
	reg   *prometheus.Registry
	m     *Metrics
	logs  *testenv.SyncBuffer
}

func setup(t *testing.T) *bundle {
	t.Helper()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	_, admin := n.Connect(t)
	if _, err := admin.CreateStream(context.Background(), jetstream.StreamConfig{Name: stream, Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	// As effects.EnsureStreams does with the streams.
	if err := CreatePositionBucket(context.Background(), admin, 1); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{t: t, nats: n, js: js, admin: admin, reg: reg, m: m, logs: &testenv.SyncBuffer{}}
}

func consumerConfig(name string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{Durable: name, Description: "test", FilterSubject: "s.>", AckWait: 30 * time.Second, MaxDeliver: -1}
}

func (b *bundle) config(name string, buffer int) Config {
	return Config{Stream: stream, Consumer: consumerConfig(name), Buffer: buffer, CheckEvery: 100 * time.Millisecond,
		Metrics: b.m, Logger: b.logger()}
}

func (b *bundle) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (b *bundle) open(cfg Config) *Reader {
	b.t.Helper()
	r, err := Open(context.Background(), b.js, cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(r.Stop)
	return r
}

// publish stores n messages and returns the last one's stream sequence.
func (b *bundle) publish(n int) uint64 {
	b.t.Helper()
	var seq uint64
	for i := range n {
		ack, err := b.admin.Publish(context.Background(), "s.x", fmt.Appendf(nil, "m%d", i))
		if err != nil {
			b.t.Fatal(err)
		}
		seq = ack.Sequence
	}
	return seq
}

// take reads n messages, acking each, and returns their stream sequences.
func (b *bundle) take(r *Reader, n int) []uint64 {
	b.t.Helper()
	var seqs []uint64
	for range n {
		m := b.next(r)
		md, err := m.Metadata()
		if err != nil {
			b.t.Fatal(err)
		}
		if err := m.Ack(); err != nil {
			b.t.Fatal(err)
		}
		seqs = append(seqs, md.Sequence.Stream)
	}
	return seqs
}

func (b *bundle) next(r *Reader) jetstream.Msg {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := r.Next(ctx)
	if err != nil {
		b.t.Fatalf("next: %v\nlogs:\n%s", err, b.logs)
	}
	return m
}

// nothing checks that r hands out nothing within d.
func (b *bundle) nothing(r *Reader, d time.Duration) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if m, err := r.Next(ctx); err == nil {
		md, _ := m.Metadata()
		b.t.Fatalf("handed out stream sequence %d; want nothing", md.Sequence.Stream)
	}
}

func (b *bundle) info(name string) *jetstream.ConsumerInfo {
	b.t.Helper()
	c, err := b.admin.Consumer(context.Background(), stream, name)
	if err != nil {
		b.t.Fatal(err)
	}
	return c.CachedInfo()
}

func (b *bundle) metric(name, consumer string) float64 {
	return testenv.MetricValue(b.t, b.reg, name, "stream", stream, "consumer", consumer)
}

// waitRecreated waits until the reader created its consumer again n times in
// all and is ready.
func (b *bundle) waitRecreated(r *Reader, consumer string, n int) {
	b.t.Helper()
	testenv.WaitFor(b.t, 20*time.Second, "the consumer created again", func() bool {
		return b.metric("effects_consumer_recreated_total", consumer) == float64(n) && r.Ready() == nil
	})
}

// ackAll acks, in a goroutine of wg, every message r hands out until ctx
// ends, sending its stream sequence to seen.
func ackAll(ctx context.Context, wg *sync.WaitGroup, r *Reader, seen chan<- uint64) {
	wg.Go(func() {
		for {
			m, err := r.Next(ctx)
			if err != nil {
				return
			}
			md, _ := m.Metadata()
			_ = m.Ack()
			seen <- md.Sequence.Stream
		}
	})
}

// A consumer that does not exist is created where its configuration says:
// a new consumer's messages have never been handled.
func TestOpenCreatesANewConsumerFromItsConfiguredStart(t *testing.T) {
	b := setup(t)
	b.publish(3)
	r := b.open(b.config("c", 8))
	if got := b.take(r, 3); got[0] != 1 {
		t.Fatalf("first message at %d, want 1 (DeliverAll)", got[0])
	}
	if logs := b.logs.String(); !strings.Contains(logs, "created the consumer") || strings.Contains(logs, "WARN") {
		t.Errorf("no log line of the creation, or a warning:\n%s", logs)
	}
}

// An existing consumer whose configuration matches is bound to without a
// write: here one the server holds without its directory, which any write
// (CreateOrUpdateConsumer included) fails with err_code 10012.
func TestOpenBindsToAMatchingConsumerWithoutWriting(t *testing.T) {
	b := setup(t)
	cfg := b.config("c", 8)
	testenv.LeaveConsumerUnstored(t, b.nats, b.admin, stream, cfg.Consumer)
	if _, err := b.admin.CreateOrUpdateConsumer(context.Background(), stream, cfg.Consumer); !unstored(err) {
		t.Fatalf("create or update of the unstored consumer: %v, want err_code 10012", err)
	}
	r := b.open(cfg)
	b.publish(1)
	b.take(r, 1)
	if strings.Contains(b.logs.String(), "updating") || strings.Contains(b.logs.String(), "created") {
		t.Errorf("wrote to a matching consumer:\n%s", b.logs)
	}
}

// A consumer whose configuration differs is updated, and the log says what
// differed; its position is its own.
func TestOpenUpdatesAConsumerWhoseConfigurationDiffers(t *testing.T) {
	b := setup(t)
	old := consumerConfig("c")
	old.AckWait, old.DeliverPolicy = 10*time.Second, jetstream.DeliverNewPolicy
	if _, err := b.admin.CreateConsumer(context.Background(), stream, old); err != nil {
		t.Fatal(err)
	}
	b.open(b.config("c", 8))
	info := b.info("c")
	if info.Config.AckWait != 30*time.Second || info.Config.DeliverPolicy != jetstream.DeliverNewPolicy {
		t.Fatalf("config after open: ack wait %s, deliver %s; want 30s, the consumer's own (new)", info.Config.AckWait, info.Config.DeliverPolicy)
	}
	if logs := b.logs.String(); !strings.Contains(logs, "updating it") || !strings.Contains(logs, "AckWait: 10s, want 30s") {
		t.Errorf("log does not say what differed:\n%s", logs)
	}
}

// A consumer the server keeps without its directory and whose configuration
// differs cannot be updated (err_code 10012): it is deleted and created
// again after its ack floor, stored.
func TestOpenReplacesAnUnstoredConsumerItMustUpdate(t *testing.T) {
	b := setup(t)
	last := b.publish(3)
	old := consumerConfig("c")
	old.AckWait, old.DeliverPolicy, old.OptStartSeq = 10*time.Second, jetstream.DeliverByStartSequencePolicy, last+1
	testenv.LeaveConsumerUnstored(t, b.nats, b.admin, stream, old)
	r := b.open(b.config("c", 8))
	if !b.nats.ConsumerStored(stream, "c") {
		t.Fatal("the consumer is still unstored")
	}
	if info := b.info("c"); info.Config.AckWait != 30*time.Second || info.Config.OptStartSeq != last+1 {
		t.Fatalf("consumer after open: ack wait %s, start %d; want 30s, %d", info.Config.AckWait, info.Config.OptStartSeq, last+1)
	}
	seq := b.publish(1)
	if got := b.take(r, 1); got[0] != seq {
		t.Fatalf("got %d, want only the new %d", got[0], seq)
	}
}

func TestDifferencesIgnoreThePositionAndServerDefaults(t *testing.T) {
	want := consumerConfig("c")
	have := want
	have.DeliverPolicy, have.OptStartSeq = jetstream.DeliverByStartSequencePolicy, 42
	have.MaxAckPending, have.MaxWaiting, have.Replicas = 1000, 512, 1
	have.Metadata = map[string]string{"_nats.ver": "2.15.3"}
	have.FilterSubjects, have.FilterSubject = []string{"s.>"}, ""
	if d := differences(want, have); len(d) != 0 {
		t.Fatalf("differences %v, want none", d)
	}
	want.MaxAckPending = 10
	want.FilterSubjects = []string{"s.a", "s.b"}
	want.FilterSubject = ""
	if d := differences(want, have); len(d) != 2 {
		t.Fatalf("differences %v, want the filter and MaxAckPending", d)
	}
}

// Defect 1 of issue 17, at the loop: a consumer deleted by hand is created
// again from where it was, not from the start of the stream; the reader is
// not ready meanwhile; the log line and the metrics say what happened.
func TestDeletedConsumerResumesAfterItsAckFloor(t *testing.T) {
	for _, buffer := range []int{8, 0} {
		t.Run(fmt.Sprint("buffer ", buffer), func(t *testing.T) {
			b := setup(t)
			r := b.open(b.config("c", buffer))
			last := b.publish(100)
			b.take(r, 100)
			testenv.WaitFor(t, 10*time.Second, "the ack floor read", func() bool {
				r.mu.Lock()
				defer r.mu.Unlock()
				return r.floor == last
			})
			if err := b.admin.DeleteConsumer(context.Background(), stream, "c"); err != nil {
				t.Fatal(err)
			}
			testenv.WaitFor(t, 10*time.Second, "not ready", func() bool { return r.Ready() != nil })
			b.waitRecreated(r, "c", 1)
			if info := b.info("c"); info.Config.DeliverPolicy != jetstream.DeliverByStartSequencePolicy || info.Config.OptStartSeq != last+1 {
				t.Fatalf("created again with %s at %d; want by start sequence at %d", info.Config.DeliverPolicy, info.Config.OptStartSeq, last+1)
			}
			b.publish(1)
			if got := b.take(r, 1); got[0] != last+1 {
				t.Fatalf("after the loss: stream sequence %d, want only the new one (%d)", got[0], last+1)
			}
			b.nothing(r, 300*time.Millisecond)
			if v := b.metric("effects_consumer_resumed_at_sequence", "c"); v != float64(last+1) {
				t.Errorf("effects_consumer_resumed_at_sequence %v, want %d", v, last+1)
			}
			if !strings.Contains(b.logs.String(), "resumed_at_stream_sequence=101") {
				t.Errorf("no log line with where it resumed:\n%s", b.logs)
			}
			if !b.nats.ConsumerStored(stream, "c") {
				t.Error("the consumer created again is not stored")
			}
		})
	}
}

// Messages this process acked above the floor it knows (here: none read
// since Open) come again from the consumer created at that floor; they are
// acked again without being handed out. Those in flight (handed out, not
// settled) at the loss are handed out again.
func TestSettledMessagesAreNotHandedOutAgain(t *testing.T) {
	b := setup(t)
	cfg := b.config("c", 8)
	cfg.CheckEvery = time.Hour // the floor stays at what Open read: 0
	r := b.open(cfg)
	b.publish(50)
	b.take(r, 40)
	var inFlight []uint64
	for range 10 {
		md, _ := b.next(r).Metadata()
		inFlight = append(inFlight, md.Sequence.Stream)
	}
	if err := b.admin.DeleteConsumer(context.Background(), stream, "c"); err != nil {
		t.Fatal(err)
	}
	// Next notices the loss (the poll that would is off) and waits for the
	// consumer created again.
	again := b.take(r, 10)
	for i, seq := range again {
		if seq != inFlight[i] {
			t.Fatalf("handed out again: %v, want the ones in flight %v", again, inFlight)
		}
	}
	b.nothing(r, 300*time.Millisecond)
	if v := b.metric("effects_consumer_settled_again_total", "c"); v != 40 {
		t.Errorf("settled again: %v, want 40", v)
	}
}

// A consumer lost with the server's store (gone after a restart) is created
// again from where it was once the server is back.
func TestConsumerLostInAServerRestartResumes(t *testing.T) {
	b := setup(t)
	r := b.open(b.config("c", 8))
	last := b.publish(30)
	b.take(r, 30)
	testenv.WaitFor(t, 10*time.Second, "the ack floor read", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.floor == last
	})
	b.nats.Shutdown()
	b.nats.LoseConsumerStore(t, stream, "c")
	b.nats.Start(t)
	b.waitRecreated(r, "c", 1)
	b.publish(1)
	if got := b.take(r, 1); got[0] != last+1 {
		t.Fatalf("after the restart: stream sequence %d, want %d", got[0], last+1)
	}
}

// Deleted again and again, the consumer is always created again on disk:
// it survives a server restart, and nothing settled runs again. (Created at
// once on "consumer deleted", nats-server 2.15.3 leaves it without its
// directory in some of the tries.)
func TestConsumerCreatedAgainIsStored(t *testing.T) {
	b := setup(t)
	r := b.open(b.config("c", 8))
	b.publish(1)
	b.take(r, 1)
	var seq uint64
	for i := 1; i <= 15; i++ {
		testenv.WaitFor(t, 10*time.Second, "the pull request waiting", func() bool { return b.info("c").NumWaiting > 0 })
		if err := b.admin.DeleteConsumer(context.Background(), stream, "c"); err != nil {
			t.Fatal(err)
		}
		b.waitRecreated(r, "c", i)
		if !b.nats.ConsumerStored(stream, "c") {
			t.Fatalf("try %d: the consumer created again has no directory", i)
		}
		seq = b.publish(1)
		if got := b.take(r, 1); got[0] != seq {
			t.Fatalf("try %d: got %d, want %d", i, got[0], seq)
		}
	}
	b.nats.Restart(t)
	if _, err := b.admin.Consumer(context.Background(), stream, "c"); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	seq = b.publish(1)
	if got := b.take(r, 1); got[0] != seq {
		t.Fatalf("after the restart: got %d, want %d", got[0], seq)
	}
	if v := b.metric("effects_consumer_recreated_total", "c"); v != 15 {
		t.Fatalf("recreated %v times after the restart, want 15", v)
	}
}

// A consumer found after a loss that the server keeps without its
// directory (another process created it during the deletion) is deleted
// and created once more, stored.
func TestUnstoredConsumerFoundAfterALossIsReplaced(t *testing.T) {
	b := setup(t)
	cfg := b.config("c", 8)
	cfg.CheckEvery = time.Hour
	r := b.open(cfg)
	last := b.publish(5)
	b.take(r, 5)
	r.noteFloor(last)
	got := make(chan uint64, 10)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ackAll(ctx, &wg, r, got) // a worker waiting in Next notices the loss
	defer func() { cancel(); wg.Wait() }()
	// What a loss leaves when another process creates the consumer in
	// the moment the server deletes it.
	testenv.LeaveConsumerUnstored(t, b.nats, b.admin, stream, cfg.Consumer)
	testenv.WaitFor(t, 20*time.Second, "the consumer replaced", func() bool {
		return b.nats.ConsumerStored(stream, "c") && r.Ready() == nil
	})
	if !strings.Contains(b.logs.String(), "without its directory") {
		t.Errorf("no log line of the unstored consumer:\n%s", b.logs)
	}
	b.nats.Restart(t)
	seq := b.publish(1)
	select {
	case s := <-got:
		if s != seq {
			t.Fatalf("after the restart: got %d, want %d (and nothing before)", s, seq)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("nothing handed out after the restart\n%s", b.logs)
	}
}

// Two processes sharing a durable converge on one consumer after a loss:
// each message is handed to one of them.
func TestReadersSharingADurableConvergeOnOneConsumer(t *testing.T) {
	b := setup(t)
	_, js2 := b.nats.Connect(t)
	r1 := b.open(b.config("c", 4))
	r2, err := Open(context.Background(), js2, b.config("c", 4))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r2.Stop)
	if err := b.admin.DeleteConsumer(context.Background(), stream, "c"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "both ready again", func() bool {
		return b.metric("effects_consumer_recreated_total", "c") >= 1 && r1.Ready() == nil && r2.Ready() == nil
	})
	const n = 40
	b.publish(n)
	seen := make(chan uint64, 2*n)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ackAll(ctx, &wg, r1, seen)
	ackAll(ctx, &wg, r2, seen)
	got := map[uint64]int{}
	for len(got) < n {
		select {
		case seq := <-seen:
			got[seq]++
		case <-ctx.Done():
			t.Fatalf("%d of %d messages handed out", len(got), n)
		}
	}
	cancel()
	wg.Wait()
	for seq, c := range got {
		if c != 1 {
			t.Errorf("stream sequence %d handed out %d times", seq, c)
		}
	}
}

// A stream created again holds only new messages: the consumer starts on it
// where its configuration says, not at the old floor.
func TestStreamCreatedAgainStartsTheConsumerAnew(t *testing.T) {
	b := setup(t)
	r := b.open(b.config("c", 8))
	b.publish(20)
	b.take(r, 20)
	if err := b.admin.DeleteStream(context.Background(), stream); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "not ready", func() bool { return r.Ready() != nil })
	if _, err := b.admin.CreateStream(context.Background(), jetstream.StreamConfig{Name: stream, Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	b.publish(3)
	b.waitRecreated(r, "c", 1)
	if got := b.take(r, 3); got[0] != 1 {
		t.Fatalf("on the new stream: first %d, want 1", got[0])
	}
}

// Stop stops pulling; Next hands out what was pulled ahead, then
// ErrStopped; Release gives back what is left, delivered again at once.
func TestStopAndRelease(t *testing.T) {
	b := setup(t)
	cfg := b.config("c", 8)
	r := b.open(cfg)
	b.publish(8)
	first := b.next(r) // the rest is pulled ahead meanwhile
	testenv.WaitFor(t, 10*time.Second, "all delivered", func() bool { return b.info("c").NumAckPending == 8 })
	r.Stop()
	select {
	case <-r.Stopped():
	default:
		t.Fatal("Stopped not closed")
	}
	if r.Ready() == nil {
		t.Error("ready after Stop")
	}
	if _, err := r.Next(context.Background()); err != nil {
		t.Fatalf("after Stop, Next: %v; want a message pulled ahead", err)
	}
	if n := r.Release(nil); n != 6 {
		t.Fatalf("released %d, want 6", n)
	}
	if _, err := r.Next(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("after Release: %v, want ErrStopped", err)
	}
	_ = first.Ack()
	// The released ones come back at once to the next reader.
	r2 := b.open(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second) // well under the ack wait
	defer cancel()
	for range 6 {
		m, err := r2.Next(ctx)
		if err != nil {
			t.Fatalf("released messages not delivered again at once: %v", err)
		}
		_ = m.Ack()
	}
}

// The nats-server behaviour the reader works around, as reported upstream
// (docs/architecture.md): a consumer created while the server deletes one
// of the same name can be left without its directory. The server keeps it
// in memory, every write of its metadata fails with err_code 10012, and it
// is gone after a restart. Should a server version fix it, this test fails:
// then the workaround (settlePause, the stored check) can go.
func TestNATSServerLosesAConsumerCreatedDuringItsDeletion(t *testing.T) {
	b := setup(t)
	cfg := consumerConfig("c")
	testenv.LeaveConsumerUnstored(t, b.nats, b.admin, stream, cfg)
	if _, err := b.admin.Consumer(context.Background(), stream, "c"); err != nil {
		t.Fatalf("the consumer is not even in memory: %v", err)
	}
	_, err := b.admin.UpdateConsumer(context.Background(), stream, cfg)
	if !unstored(err) || !strings.Contains(err.Error(), "meta.inf.tmp") {
		t.Fatalf("update: %v, want err_code 10012 …/meta.inf.tmp: no such file or directory", err)
	}
	b.nats.Restart(t)
	if _, err := b.admin.Consumer(context.Background(), stream, "c"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("after a restart: %v, want consumer not found", err)
	}
}

// Pause gives back what was pulled ahead and pulls nothing more, while the
// consumer stays watched: a consumer deleted during the pause is created
// again from where it was, without pulling; Resume pulls again, and what
// was given back comes at once.
func TestPauseGivesBackAndResumePullsAgain(t *testing.T) {
	b := setup(t)
	r := b.open(b.config("c", 8))
	b.publish(8)
	first := b.next(r) // the rest is pulled ahead meanwhile
	testenv.WaitFor(t, 10*time.Second, "all delivered", func() bool { return b.info("c").NumAckPending == 8 })

	var given []uint64
	if n := r.Pause(func(jm jetstream.Msg) {
		md, _ := jm.Metadata()
		given = append(given, md.Sequence.Stream)
		_ = jm.Nak()
	}); n != 7 || len(given) != 7 {
		t.Fatalf("paused: gave back %d (%v), want the 7 pulled ahead", n, given)
	}
	if n := r.Pause(nil); n != 0 {
		t.Fatalf("paused again: gave back %d", n)
	}
	if err := r.Ready(); err != nil {
		t.Fatalf("paused, not ready: %v", err)
	}
	_ = first.Ack()
	// Nothing is pulled while paused: what was given back stays in the
	// stream, undelivered, and so do new messages.
	b.publish(2)
	b.nothing(r, time.Second)
	if info := b.info("c"); info.Delivered.Consumer != 8 || info.NumWaiting != 0 || info.NumPending != 2 {
		t.Fatalf("paused: %d deliveries, %d pull requests waiting, %d new; want the 8 before the pause, none, 2",
			info.Delivered.Consumer, info.NumWaiting, info.NumPending)
	}

	// Deleted while paused: created again from its ack floor, still
	// without pulling.
	if err := b.admin.DeleteConsumer(context.Background(), stream, "c"); err != nil {
		t.Fatal(err)
	}
	b.waitRecreated(r, "c", 1)
	b.nothing(r, time.Second)
	if info := b.info("c"); info.Delivered.Consumer != 0 || info.NumWaiting != 0 {
		t.Fatalf("created again while paused: %d deliveries, %d pull requests waiting; want none", info.Delivered.Consumer, info.NumWaiting)
	}

	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]bool{}
	for _, seq := range b.take(r, 9) {
		got[seq] = true
	}
	for seq := uint64(2); seq <= 10; seq++ {
		if !got[seq] {
			t.Fatalf("after the resume: stream sequences %v, want 2 to 10", got)
		}
	}
	b.nothing(r, 500*time.Millisecond) // the acked first one does not come back
}

// Next waits while the reader is paused and returns once it is resumed, or
// ErrStopped once it is stopped.
func TestNextWaitsWhilePaused(t *testing.T) {
	b := setup(t)
	for _, buffer := range []int{0, 4} {
		r := b.open(b.config(fmt.Sprintf("c%d", buffer), buffer))
		r.Pause(nil)
		b.publish(1)
		got := make(chan error, 1)
		go func() {
			m, err := r.Next(context.Background())
			if err == nil {
				err = m.Ack()
			}
			got <- err
		}()
		b.nothing(r, 500*time.Millisecond)
		select {
		case err := <-got:
			t.Fatalf("buffer %d: Next returned while paused: %v", buffer, err)
		default:
		}
		if err := r.Resume(); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatalf("buffer %d: after the resume: %v", buffer, err)
		}
		r.Pause(nil)
		go func() { _, err := r.Next(context.Background()); got <- err }()
		r.Stop()
		if err := <-got; !errors.Is(err, ErrStopped) {
			t.Fatalf("buffer %d: stopped while paused: %v, want ErrStopped", buffer, err)
		}
		if err := r.Resume(); err != nil || r.Release(nil) != 0 {
			t.Fatalf("buffer %d: resume or release after the stop: %v", buffer, err)
		}
	}
}
