package consume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/testenv"
)

// recorded is the position the bucket holds for consumer.
func (b *bundle) recorded(consumer string) (position, bool) {
	b.t.Helper()
	ctx := context.Background()
	kv, err := b.admin.KeyValue(ctx, PositionBucket)
	if err != nil {
		return position{}, false
	}
	e, err := kv.Get(ctx, PositionKey(stream, consumer))
	if err != nil {
		return position{}, false
	}
	var p position
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		b.t.Fatalf("recorded position %q: %v", e.Value(), err)
	}
	return p, true
}

// waitRecorded waits until the bucket holds floor for consumer.
func (b *bundle) waitRecorded(consumer string, floor uint64) {
	b.t.Helper()
	testenv.WaitFor(b.t, 10*time.Second, fmt.Sprintf("ack floor %d recorded", floor), func() bool {
		p, ok := b.recorded(consumer)
		return ok && p.AckFloor == floor
	})
}

func (b *bundle) deleteConsumer(name string) {
	b.t.Helper()
	if err := b.admin.DeleteConsumer(context.Background(), stream, name); err != nil {
		b.t.Fatal(err)
	}
}

// The gap the position bucket closes: a consumer lost while no process
// reads it (deleted during a deploy, or lost with the server's store in a
// restart of everything) was created by the next process with DeliverAll,
// and every message of the stream ran again. It is created again after the
// ack floor the last reader recorded: at its release (a clean stop), or
// now and then while it read (a crash).
func TestConsumerLostWhileNoReaderRunsResumesAfterTheRecordedFloor(t *testing.T) {
	for _, tc := range []struct {
		name string
		// checkEvery: how often the reader reads (and records) its
		// floor while it runs; an hour leaves only the record at Release.
		checkEvery time.Duration
		stop       func(b *bundle, r *Reader, last uint64)
		lose       func(b *bundle)
	}{
		{"released, deleted", time.Hour, func(b *bundle, r *Reader, _ uint64) { r.Release(nil) }, func(b *bundle) { b.deleteConsumer("c") }},
		{"crashed, deleted", 10 * time.Millisecond, func(b *bundle, r *Reader, last uint64) { b.waitRecorded("c", last); r.Stop() }, func(b *bundle) { b.deleteConsumer("c") }},
		{"released, lost with the server's store", time.Hour, func(b *bundle, r *Reader, _ uint64) { r.Release(nil) }, func(b *bundle) {
			b.nats.Shutdown()
			b.nats.LoseConsumerStore(b.t, stream, "c")
			b.nats.Start(b.t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t)
			cfg := b.config("c", 8)
			cfg.RecordEvery, cfg.CheckEvery = 50*time.Millisecond, tc.checkEvery
			r := b.open(cfg)
			last := b.publish(100)
			b.take(r, 100)
			tc.stop(b, r, last)
			b.waitRecorded("c", last)
			tc.lose(b)
			if _, err := b.admin.Consumer(context.Background(), stream, "c"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
				t.Fatalf("consumer after the loss: %v, want not found", err)
			}
			fresh := b.publish(1)

			r2 := b.open(cfg)
			if got := b.take(r2, 1); got[0] != fresh {
				t.Fatalf("first message after the loss: stream sequence %d, want only the new one (%d)", got[0], fresh)
			}
			b.nothing(r2, 300*time.Millisecond)
			if info := b.info("c"); info.Config.DeliverPolicy != jetstream.DeliverByStartSequencePolicy || info.Config.OptStartSeq != last+1 {
				t.Errorf("created again with %s at %d; want by start sequence at %d", info.Config.DeliverPolicy, info.Config.OptStartSeq, last+1)
			}
			if logs := b.logs.String(); !strings.Contains(logs, "lost while no process read it") || !strings.Contains(logs, "resumed_at_stream_sequence=101") {
				t.Errorf("no log line of the loss with where it resumed:\n%s", logs)
			}
			if v := b.metric("effects_consumer_recreated_total", "c"); v != 1 {
				t.Errorf("effects_consumer_recreated_total %v, want 1", v)
			}
			if v := b.metric("effects_consumer_resumed_at_sequence", "c"); v != float64(last+1) {
				t.Errorf("effects_consumer_resumed_at_sequence %v, want %d", v, last+1)
			}
		})
	}
}

// A consumer that never existed (no position recorded for it, though the
// bucket holds others') is new: its messages never ran, and it starts
// where its configuration says, from the first message.
func TestNewConsumerStartsFromItsConfiguredStartBesideRecordedOnes(t *testing.T) {
	b := setup(t)
	old := b.open(b.config("old", 8))
	last := b.publish(10)
	b.take(old, 10)
	old.Release(nil)
	b.waitRecorded("old", last)

	r := b.open(b.config("new", 8))
	got := b.take(r, 10)
	if got[0] != 1 || got[9] != last {
		t.Fatalf("the new consumer got %v, want 1…%d", got, last)
	}
	if logs := b.logs.String(); strings.Contains(logs, "WARN") {
		t.Errorf("a warning for a new consumer:\n%s", logs)
	}
	b.waitRecorded("new", last)
}

// The position bucket deleted (with the consumer, while no process reads
// it): whether the consumer existed cannot be told, so it is created where
// its configuration says, as before the bucket existed; the log says so,
// nothing stalls, and positions are recorded again.
func TestPositionBucketDeletedWhileNoReaderRuns(t *testing.T) {
	b := setup(t)
	cfg := b.config("c", 8)
	cfg.RecordEvery = 10 * time.Millisecond
	r := b.open(cfg)
	last := b.publish(20)
	b.take(r, 20)
	r.Release(nil)
	b.waitRecorded("c", last)
	if err := b.admin.DeleteKeyValue(context.Background(), PositionBucket); err != nil {
		t.Fatal(err)
	}
	b.deleteConsumer("c")

	r2 := b.open(cfg)
	if got := b.take(r2, 20); got[0] != 1 {
		t.Fatalf("first message %d, want 1: where the configuration says", got[0])
	}
	if logs := b.logs.String(); !strings.Contains(logs, "without knowing whether it existed") {
		t.Errorf("no warning that the position was missing:\n%s", logs)
	}
	b.waitRecorded("c", last) // the bucket was created again
}

// The position bucket deleted while a reader runs: it goes on consuming,
// says so, creates the bucket again and records its position there.
func TestPositionBucketDeletedWhileAReaderRuns(t *testing.T) {
	b := setup(t)
	cfg := b.config("c", 8)
	cfg.RecordEvery = 10 * time.Millisecond
	r := b.open(cfg)
	last := b.publish(5)
	b.take(r, 5)
	b.waitRecorded("c", last)
	if err := b.admin.DeleteKeyValue(context.Background(), PositionBucket); err != nil {
		t.Fatal(err)
	}
	last = b.publish(5)
	b.take(r, 5)
	b.waitRecorded("c", last)
	if logs := b.logs.String(); !strings.Contains(logs, "was gone (deleted?); created it again") {
		t.Errorf("no warning of the bucket gone:\n%s", logs)
	}
}

// A bucket that cannot be written (here sealed) does not stop consuming:
// the reader says so and sets effects_consumer_position_up to 0; once
// positions can be recorded again (the broken bucket deleted, created
// again), it is back to 1.
func TestPositionThatCannotBeRecordedDoesNotStopConsuming(t *testing.T) {
	b := setup(t)
	cfg := b.config("c", 8)
	cfg.RecordEvery = 10 * time.Millisecond
	r := b.open(cfg)
	ctx := context.Background()
	s, err := b.admin.Stream(ctx, "KV_"+PositionBucket)
	if err != nil {
		t.Fatal(err)
	}
	sealed := s.CachedInfo().Config
	sealed.Sealed = true
	if _, err := b.admin.UpdateStream(ctx, sealed); err != nil {
		t.Fatal(err)
	}
	b.publish(5)
	b.take(r, 5)
	testenv.WaitFor(t, 10*time.Second, "effects_consumer_position_up 0", func() bool {
		return b.metric("effects_consumer_position_up", "c") == 0
	})
	if logs := b.logs.String(); !strings.Contains(logs, "cannot record the consumer's position") {
		t.Errorf("no warning:\n%s", logs)
	}
	if err := b.admin.DeleteKeyValue(ctx, PositionBucket); err != nil {
		t.Fatal(err)
	}
	last := b.publish(5)
	b.take(r, 5)
	b.waitRecorded("c", last)
	testenv.WaitFor(t, 10*time.Second, "effects_consumer_position_up 1", func() bool {
		return b.metric("effects_consumer_position_up", "c") == 1
	})
}

// Two processes sharing a durable write the same key: the recorded floor
// never moves back, whichever writes last, and a consumer lost after both
// stopped resumes after the floor they reached.
func TestReadersSharingADurableRecordOnePosition(t *testing.T) {
	b := setup(t)
	_, js2 := b.nats.Connect(t)
	cfg := b.config("c", 4)
	cfg.RecordEvery, cfg.CheckEvery = time.Millisecond, 10*time.Millisecond
	r1 := b.open(cfg)
	r2, err := Open(context.Background(), js2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r2.Stop)

	kv, err := b.admin.KeyValue(context.Background(), PositionBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(context.Background(), PositionKey(stream, "c"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	var floors []uint64
	var fmu sync.Mutex
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var p position
			if json.Unmarshal(e.Value(), &p) == nil {
				fmu.Lock()
				floors = append(floors, p.AckFloor)
				fmu.Unlock()
			}
		}
	}()

	// Batches, each recorded before the next: both readers take part
	// and write the key many times.
	const batches, size = 6, 50
	seen := make(chan uint64, batches*size)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ackAll(ctx, &wg, r1, seen)
	ackAll(ctx, &wg, r2, seen)
	var last uint64
	for range batches {
		last = b.publish(size)
		for range size {
			select {
			case <-seen:
			case <-ctx.Done():
				t.Fatal("not every message handed out")
			}
		}
		b.waitRecorded("c", last)
	}
	cancel()
	wg.Wait()
	r1.Release(nil)
	r2.Release(nil)
	b.waitRecorded("c", last)
	_ = w.Stop()
	<-watched
	fmu.Lock()
	for i := 1; i < len(floors); i++ {
		if floors[i] < floors[i-1] {
			t.Fatalf("the recorded floor moved back: %v", floors)
		}
	}
	t.Logf("%d writes of the position for %d messages", len(floors), batches*size)
	fmu.Unlock()

	b.deleteConsumer("c")
	fresh := b.publish(1)
	r3 := b.open(cfg)
	if got := b.take(r3, 1); got[0] != fresh {
		t.Fatalf("after the loss: %d, want only the new %d", got[0], fresh)
	}
}

// A write never moves the position back: a lower floor of the same
// consumer is not written; a consumer or a stream created later replaces
// the position even below it.
func TestPositionWritesOnlyMoveForward(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	_, js2 := b.nats.Connect(t)
	mk := func(js jetstream.JetStream) *positions {
		return &positions{js: js, key: PositionKey(stream, "c"), every: time.Nanosecond, log: b.logger()}
	}
	p1, p2 := mk(b.js), mk(js2)
	t0 := time.Now().Truncate(time.Second)
	s1, c1, c2, s2 := t0, t0.Add(time.Second), t0.Add(2*time.Second), t0.Add(3*time.Second)
	for i, step := range []struct {
		p    *positions
		pos  position
		want uint64
	}{
		{p1, position{AckFloor: 10, StreamCreated: s1, ConsumerCreated: c1}, 10},
		{p2, position{AckFloor: 5, StreamCreated: s1, ConsumerCreated: c1}, 10}, // stale: not written
		{p2, position{AckFloor: 12, StreamCreated: s1, ConsumerCreated: c1}, 12},
		{p1, position{AckFloor: 11, StreamCreated: s1, ConsumerCreated: c1}, 12}, // p1's revision is stale too
		{p1, position{AckFloor: 3, StreamCreated: s1, ConsumerCreated: c2}, 3},   // a consumer created again
		{p2, position{AckFloor: 12, StreamCreated: s1, ConsumerCreated: c1}, 3},  // the one before it
		{p2, position{AckFloor: 1, StreamCreated: s2, ConsumerCreated: c2}, 1},   // a stream created again
	} {
		step.p.record(ctx, step.pos, false)
		if got, _ := b.recorded("c"); got.AckFloor != step.want {
			t.Fatalf("step %d: recorded floor %d, want %d", i, got.AckFloor, step.want)
		}
	}
}

// The messages after the recorded floor were removed by the stream's limits
// (here a purge, as max age would): the consumer resumes at the first
// message there is. A floor beyond the stream's last message (a stream
// restored from an older copy) resumes after its last one, so that no new
// message is skipped.
func TestResumeAtIsWithinTheStream(t *testing.T) {
	if got := resumeAt(10, jetstream.StreamState{FirstSeq: 1, LastSeq: 100}); got != 11 {
		t.Errorf("within: %d, want 11", got)
	}
	if got := resumeAt(10, jetstream.StreamState{FirstSeq: 50, LastSeq: 100}); got != 50 {
		t.Errorf("removed by max age: %d, want 50", got)
	}
	if got := resumeAt(500, jetstream.StreamState{FirstSeq: 1, LastSeq: 100}); got != 101 {
		t.Errorf("beyond the stream: %d, want 101", got)
	}
	if got := resumeAt(0, jetstream.StreamState{}); got != 1 {
		t.Errorf("empty stream: %d, want 1", got)
	}

	b := setup(t)
	ctx := context.Background()
	cfg := b.config("c", 8)
	r := b.open(cfg)
	b.publish(10)
	b.take(r, 10)
	r.Release(nil)
	b.waitRecorded("c", 10)
	b.deleteConsumer("c")
	b.publish(40)
	s, err := b.admin.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(30)); err != nil { // keeps 30…50
		t.Fatal(err)
	}
	r2 := b.open(cfg)
	if got := b.take(r2, 21); got[0] != 30 || got[20] != 50 {
		t.Fatalf("after the purge: %d…%d, want 30…50", got[0], got[20])
	}
	if !strings.Contains(b.logs.String(), "skipped=") {
		t.Errorf("the log does not say messages were skipped:\n%s", b.logs)
	}
	r2.Release(nil)
	b.waitRecorded("c", 50)

	// As if the stream were restored from a copy older than the position.
	b.deleteConsumer("c")
	kv, err := b.admin.KeyValue(ctx, PositionBucket)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := b.recorded("c")
	p.AckFloor = 500
	val, _ := json.Marshal(p)
	if _, err := kv.Put(ctx, PositionKey(stream, "c"), val); err != nil {
		t.Fatal(err)
	}
	r3 := b.open(cfg)
	fresh := b.publish(1)
	if got := b.take(r3, 1); got[0] != fresh {
		t.Fatalf("with a floor beyond the stream: %d, want the new %d", got[0], fresh)
	}
}

// Every stream and consumer name makes a valid key, and two never share one.
func TestPositionKey(t *testing.T) {
	valid := regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)
	seen := map[string]string{}
	for _, sc := range [][2]string{
		{"EFFECTS", "dispatcher-send_email"}, {"EFFECTS_COMPLETED", "effects-completer"},
		{"S", "a=b"}, {"S", "a=3Db"}, {"S", "a/b"}, {"S", "ä b"}, {"S", "a:b"}, {"S-1", "x"}, {"S", "1-x"},
	} {
		k := PositionKey(sc[0], sc[1])
		if !valid.MatchString(k) || strings.Count(k, ".") != 1 {
			t.Errorf("%v: key %q is not a valid key with one '.'", sc, k)
		}
		if other, ok := seen[k]; ok {
			t.Errorf("%v and %s share key %q", sc, other, k)
		}
		seen[k] = fmt.Sprint(sc)
	}
	if k := PositionKey("EFFECTS", "dispatcher-send_email"); k != "EFFECTS.dispatcher-send_email" {
		t.Errorf("key %q, want the names as they are", k)
	}
}
