package watermilljs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects/watermilljs"
)

func TestAck(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sub := b.subscriber(t, watermilljs.Config{})
	b.publish(t, "ack", 1)
	msg := receive(t, subscribe(t, sub, "ack"))

	msg.Ack()
	eventually(t, "the consumer has no ack pending and its ack floor is 1", func() bool {
		info := b.consumerInfo(t, "ack")
		return info.NumAckPending == 0 && info.AckFloor.Stream == 1
	})
	// Watermill's contract: the message's context ends once it is acked.
	select {
	case <-msg.Context().Done():
	case <-time.After(receiveTimeout):
		t.Fatal("message context not done after Ack")
	}
}

func TestNackRedeliversAfterNackDelay(t *testing.T) {
	t.Parallel()
	const nackDelay = 300 * time.Millisecond
	b := setup(t)
	sub := b.subscriber(t, watermilljs.Config{NackDelay: nackDelay, Concurrency: 2})
	b.publish(t, "nack", 1)
	ch := subscribe(t, sub, "nack")
	msg := receive(t, ch)

	nacked := time.Now()
	msg.Nack()
	again := receive(t, ch)
	if waited := time.Since(nacked); waited < nackDelay {
		t.Errorf("redelivered after %s, before the nack delay %s", waited, nackDelay)
	}
	if again.UUID != msg.UUID {
		t.Errorf("redelivered %s, want %s", again.UUID, msg.UUID)
	}
	if n := delivery(t, again).NumDelivered(); n != 2 {
		t.Errorf("NumDelivered = %d, want 2", n)
	}
	again.Ack()
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	const retryAfter = 400 * time.Millisecond
	for _, settle := range []string{"Ack", "Nack"} {
		t.Run("then "+settle, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			// A NackDelay longer than the receive timeout: the redelivery
			// must follow RetryAfter, not NackDelay.
			sub := b.subscriber(t, watermilljs.Config{NackDelay: time.Minute, Concurrency: 2})
			b.publish(t, "retry", 1)
			ch := subscribe(t, sub, "retry")
			msg := receive(t, ch)

			delivery(t, msg).RetryAfter(retryAfter)
			settled := time.Now()
			if settle == "Ack" {
				msg.Ack()
			} else {
				msg.Nack()
			}
			again := receive(t, ch)
			if waited := time.Since(settled); waited < retryAfter {
				t.Errorf("redelivered after %s, before RetryAfter's %s", waited, retryAfter)
			}
			if again.UUID != msg.UUID || delivery(t, again).NumDelivered() != 2 {
				t.Errorf("got %s delivery %d, want %s delivery 2", again.UUID, delivery(t, again).NumDelivered(), msg.UUID)
			}
			again.Ack()
		})
	}
}

func TestTerminate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	advisories, err := b.nc.SubscribeSync(fmt.Sprintf("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.%s.%s", testStream, durableOf("term")))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	sub := b.subscriber(t, watermilljs.Config{Concurrency: 2})
	ids := b.publish(t, "term", 1)
	ch := subscribe(t, sub, "term")
	msg := receive(t, ch)

	delivery(t, msg).Terminate()
	msg.Ack()

	am, err := advisories.NextMsg(receiveTimeout)
	if err != nil {
		t.Fatalf("no MSG_TERMINATED advisory: %v", err)
	}
	var adv struct {
		Stream     string `json:"stream"`
		Consumer   string `json:"consumer"`
		StreamSeq  uint64 `json:"stream_seq"`
		Deliveries uint64 `json:"deliveries"`
		Reason     string `json:"reason"`
	}
	if err := json.Unmarshal(am.Data, &adv); err != nil {
		t.Fatalf("advisory %s: %v", am.Data, err)
	}
	if adv.Stream != testStream || adv.Consumer != durableOf("term") || adv.StreamSeq != 1 {
		t.Errorf("advisory = %+v", adv)
	}

	// Never redelivered: the next message out is a later one, and the
	// server holds nothing for the consumer.
	const later = "term-later"
	m := nats.NewMsg(subjectOf("term"))
	m.Header.Set(jetstream.MsgIDHeader, later)
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if next := receive(t, ch); next.UUID != later {
		t.Errorf("next message is %s, want %s (the terminated %s came back?)", next.UUID, later, ids[0])
	} else {
		next.Ack()
	}
	eventually(t, "nothing is pending or redelivered", func() bool {
		info := b.consumerInfo(t, "term")
		return info.NumAckPending == 0 && info.NumPending == 0 && info.NumRedelivered == 0
	})
}

// TestConcurrencyLimit checks that a subscriber never has more than
// Concurrency messages out: readers take messages off the channel at once,
// as the router does, and hold them; with Concurrency held, a reader is
// still waiting, and gets nothing until one is settled.
func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	const limit, rounds = 4, 5
	b := setup(t)
	sub := b.subscriber(t, watermilljs.Config{Concurrency: limit})
	b.publish(t, "conc", limit*rounds)
	ch := subscribe(t, sub, "conc")

	var held, peak atomic.Int32
	heldMsgs := make(chan *message.Message, limit*rounds)
	var readers sync.WaitGroup
	for range 2 * limit {
		readers.Go(func() {
			for msg := range ch {
				n := held.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				heldMsgs <- msg
			}
		})
	}
	for r := range rounds {
		batch := make([]*message.Message, 0, limit)
		for len(batch) < limit {
			select {
			case msg := <-heldMsgs:
				batch = append(batch, msg)
			case <-time.After(receiveTimeout):
				t.Fatalf("round %d: %d of %d messages handed out", r, len(batch), limit)
			}
		}
		// Readers are idle now; a subscriber that broke the limit would
		// hand one of them another message within this window.
		select {
		case msg := <-heldMsgs:
			t.Fatalf("round %d: message %s handed out while %d were unsettled", r, msg.UUID, limit)
		case <-time.After(100 * time.Millisecond):
		}
		for _, msg := range batch {
			held.Add(-1) // before the ack: the slot may be reused at once
			msg.Ack()
		}
	}
	if p := peak.Load(); p != limit {
		t.Errorf("at most %d messages were out at once, want exactly %d", p, limit)
	}
	_ = sub.Close()
	readers.Wait()
	eventually(t, "every message is acked", func() bool {
		info := b.consumerInfo(t, "conc")
		return info.NumAckPending == 0 && info.AckFloor.Stream == limit*rounds
	})
}

// TestInProgress checks that a message held for longer than AckWait is not
// redelivered while InProgress is sent, and is without it (the control,
// which shows the hold is long enough to matter).
func TestInProgress(t *testing.T) {
	t.Parallel()
	const ackWait, hold = time.Second, 2500 * time.Millisecond
	for _, tc := range []struct {
		name       string
		inProgress time.Duration
	}{{"sent", ackWait / 4}, {"not sent", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			// Concurrency 2, so a redelivery could be handed out while the
			// first delivery is held.
			sub := b.subscriber(t, watermilljs.Config{
				Consumer:        consumerConfig(ackWait),
				Concurrency:     2,
				InProgressEvery: tc.inProgress,
			})
			b.publish(t, "long", 1)
			ch := subscribe(t, sub, "long")
			msg := receive(t, ch)

			select {
			case again := <-ch:
				if tc.inProgress > 0 {
					t.Fatalf("redelivered (delivery %d) while held with InProgress", delivery(t, again).NumDelivered())
				}
				again.Ack()
			case <-time.After(hold):
				if tc.inProgress == 0 {
					t.Fatalf("not redelivered after %s without InProgress (AckWait %s): the test proves nothing", hold, ackWait)
				}
			}
			msg.Ack()
			if tc.inProgress > 0 {
				eventually(t, "the message is acked", func() bool {
					return b.consumerInfo(t, "long").NumAckPending == 0
				})
				if info := b.consumerInfo(t, "long"); info.NumRedelivered != 0 {
					t.Errorf("NumRedelivered = %d, want 0", info.NumRedelivered)
				}
			}
		})
	}
}

// TestCloseKeepsConsumer checks that Close leaves the durable consumer, and
// that a new subscriber resumes after what was acked, getting at once what
// the closed one had pulled but not handed out.
func TestCloseKeepsConsumer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// AckWait far beyond receiveTimeout: only a prompt give-back passes.
	cfg := watermilljs.Config{Consumer: consumerConfig(time.Minute), Concurrency: 2}
	first := b.subscriber(t, cfg)
	ids := b.publish(t, "keep", 6)
	ch := subscribe(t, first, "keep")
	for range 3 {
		receive(t, ch).Ack()
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if rest := expectClosed(t, ch); len(rest) > 0 {
		t.Fatalf("%d messages handed out after Close", len(rest))
	}
	info := b.consumerInfo(t, "keep") // fails if Close deleted it
	if info.Config.Durable != durableOf("keep") {
		t.Fatalf("consumer after Close: %+v", info.Config)
	}

	second := b.subscriber(t, cfg)
	ch = subscribe(t, second, "keep")
	var got []string
	for range 3 {
		msg := receive(t, ch)
		got = append(got, msg.UUID)
		msg.Ack()
	}
	slices.Sort(got)
	if want := ids[3:]; !slices.Equal(got, want) {
		t.Errorf("the new subscriber got %v, want %v", got, want)
	}
	eventually(t, "nothing is left for the consumer", func() bool {
		info := b.consumerInfo(t, "keep")
		return info.NumPending == 0 && info.NumAckPending == 0
	})
}

// A topic's consumer deleted while the subscriber reads it is created again
// where it was: what was acked is not handed out again, what is published
// since (while it was gone, too) is.
func TestDeletedConsumerIsCreatedAgainWhereItWas(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sub := b.subscriber(t, watermilljs.Config{})
	b.publish(t, "lost", 3)
	ch := subscribe(t, sub, "lost")
	for range 3 {
		receive(t, ch).Ack()
	}
	eventually(t, "acked", func() bool { return b.consumerInfo(t, "lost").AckFloor.Stream == 3 })
	if err := b.js.DeleteConsumer(context.Background(), testStream, durableOf("lost")); err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(subjectOf("lost"))
	m.Data = []byte("lost-4")
	m.Header.Set(jetstream.MsgIDHeader, "lost-4")
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	msg := receive(t, ch)
	if msg.UUID != "lost-4" {
		t.Fatalf("after the loss: %s, want only lost-4", msg.UUID)
	}
	msg.Ack()
}

// A topic's consumer deleted while no subscriber reads it (between a
// Close and the next Subscribe, as in a deploy) is not read from the start
// again: the next subscriber resumes after the ack floor the closed one
// recorded (internal/consume's position bucket).
func TestConsumerDeletedWhileClosedResumesWhereItWas(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.subscriber(t, watermilljs.Config{})
	b.publish(t, "gone", 3)
	ch := subscribe(t, first, "gone")
	for range 3 {
		receive(t, ch).Ack()
	}
	eventually(t, "acked", func() bool { return b.consumerInfo(t, "gone").AckFloor.Stream == 3 })
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.js.DeleteConsumer(context.Background(), testStream, durableOf("gone")); err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(subjectOf("gone"))
	m.Data = []byte("gone-4")
	m.Header.Set(jetstream.MsgIDHeader, "gone-4")
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	ch = subscribe(t, b.subscriber(t, watermilljs.Config{}), "gone")
	msg := receive(t, ch)
	if msg.UUID != "gone-4" {
		t.Fatalf("after the loss: %s, want only gone-4", msg.UUID)
	}
	msg.Ack()
}

// TestCloseGivesBackUnsettled checks that Close naks a message still out,
// ends its context with ErrClosed, and that it is redelivered at once.
func TestCloseGivesBackUnsettled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := watermilljs.Config{Consumer: consumerConfig(time.Minute), NackDelay: time.Minute, InProgressEvery: time.Second}
	first := b.subscriber(t, cfg)
	b.publish(t, "held", 1)
	msg := receive(t, subscribe(t, first, "held"))

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-msg.Context().Done():
		if cause := context.Cause(msg.Context()); !errors.Is(cause, watermilljs.ErrClosed) {
			t.Errorf("context cause = %v, want ErrClosed", cause)
		}
	default:
		t.Fatal("message context not done after Close")
	}
	if msg.Ack() {
		t.Error("Ack after Close succeeded; the message was given back")
	}
	again := receive(t, subscribe(t, b.subscriber(t, cfg), "held"))
	if again.UUID != msg.UUID || delivery(t, again).NumDelivered() != 2 {
		t.Errorf("got %s delivery %d, want %s delivery 2", again.UUID, delivery(t, again).NumDelivered(), msg.UUID)
	}
	again.Ack()
}

// TestCloseWhileDisconnected checks that Close does not wait on a server
// that is down, and that the message it held is not lost.
func TestCloseWhileDisconnected(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := watermilljs.Config{Consumer: consumerConfig(time.Minute), Concurrency: 4}
	first := b.subscriber(t, cfg)
	b.publish(t, "down", 10)
	msg := receive(t, subscribe(t, first, "down"))

	b.nats.Shutdown()
	disconnected := time.Now()
	for b.nc.IsConnected() {
		if time.Since(disconnected) > receiveTimeout {
			t.Fatal("client still connected to a stopped server")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %s with the server down", took)
	}
	if cause := context.Cause(msg.Context()); !errors.Is(cause, watermilljs.ErrClosed) {
		t.Errorf("context cause = %v, want ErrClosed", cause)
	}

	b.nats.Restart(t)
	ch := subscribe(t, b.subscriber(t, cfg), "down")
	for {
		again := receive(t, ch)
		again.Ack()
		if again.UUID == msg.UUID {
			break
		}
	}
}

func TestStopFetchingAndWaitSettled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sub := b.subscriber(t, watermilljs.Config{Consumer: consumerConfig(time.Minute), Concurrency: 3})
	b.publish(t, "stop", 8)
	ch := subscribe(t, sub, "stop")
	held := []*message.Message{receive(t, ch), receive(t, ch)}

	sub.StopFetching()
	held = append(held, expectClosed(t, ch)...) // one more may have been on its way
	if _, err := sub.Subscribe(context.Background(), "other"); !errors.Is(err, watermilljs.ErrClosed) {
		t.Errorf("Subscribe after StopFetching: %v, want ErrClosed", err)
	}

	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := sub.WaitSettled(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitSettled with %d messages held = %v, want DeadlineExceeded", len(held), err)
	}
	settled := make(chan error, 1)
	go func() { settled <- sub.WaitSettled(context.Background()) }()
	for _, msg := range held {
		msg.Ack()
	}
	select {
	case err := <-settled:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(receiveTimeout):
		t.Fatal("WaitSettled did not return after every message was acked")
	}
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}

	// The rest went back to the stream at once, not after AckWait (1m): a
	// new subscriber gets them all now.
	seen := map[string]bool{}
	for _, msg := range held {
		seen[msg.UUID] = true
	}
	ch = subscribe(t, b.subscriber(t, watermilljs.Config{Consumer: consumerConfig(time.Minute), Concurrency: 3}), "stop")
	for range 8 - len(held) {
		msg := receive(t, ch)
		if seen[msg.UUID] {
			t.Errorf("%s delivered again after it was acked", msg.UUID)
		}
		seen[msg.UUID] = true
		msg.Ack()
	}
	eventually(t, "nothing is left for the consumer", func() bool {
		info := b.consumerInfo(t, "stop")
		return info.NumAckPending == 0 && info.NumPending == 0
	})
}

// TestWaitSettledWhileMessagesFlow stops a subscriber while messages are
// being handed out and acked, as the dispatcher's shutdown does: nothing may
// be handed out after WaitSettled returned. (A fetch loop that had just
// pulled a message used to count it after WaitSettled began waiting.)
func TestWaitSettledWhileMessagesFlow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i := range 10 {
		topic := fmt.Sprintf("flow-%d", i)
		b.publish(t, topic, 40)
		sub := b.subscriber(t, watermilljs.Config{Concurrency: 8})
		ch := subscribe(t, sub, topic)
		var settledReturned atomic.Bool
		var late atomic.Int32
		flowing := make(chan struct{})
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			n := 0
			for msg := range ch {
				if settledReturned.Load() {
					late.Add(1)
				}
				msg.Ack()
				if n++; n == 5 {
					close(flowing)
				}
			}
		}()
		select {
		case <-flowing:
		case <-time.After(receiveTimeout):
			t.Fatal("messages did not flow")
		}
		sub.StopFetching()
		ctx, cancel := context.WithTimeout(context.Background(), receiveTimeout)
		err := sub.WaitSettled(ctx)
		cancel()
		if err != nil {
			t.Fatalf("WaitSettled: %v", err)
		}
		settledReturned.Store(true)
		<-readerDone
		if n := late.Load(); n > 0 {
			t.Fatalf("%d messages handed out after WaitSettled returned", n)
		}
	}
}

func TestMessageMetadata(t *testing.T) {
	t.Parallel()
	b := setup(t)
	sub := b.subscriber(t, watermilljs.Config{})
	pub, err := watermilljs.NewPublisher(b.js, watermilljs.PublisherConfig{Subject: subjectOf})
	if err != nil {
		t.Fatal(err)
	}
	ch := subscribe(t, sub, "meta")

	// From a Watermill publisher: its metadata, with its correlation id.
	sent := message.NewMessage("wm-1", []byte(`{"a":1}`))
	sent.Metadata.Set("tenant", "acme")
	middleware.SetCorrelationID("corr-1", sent)
	if err := pub.Publish("meta", sent); err != nil {
		t.Fatal(err)
	}
	got := receive(t, ch)
	if got.UUID != "wm-1" || string(got.Payload) != `{"a":1}` {
		t.Errorf("got %s %s", got.UUID, got.Payload)
	}
	for k, want := range map[string]string{"tenant": "acme", middleware.CorrelationIDMetadataKey: "corr-1", "nats_subject": "t.meta"} {
		if v := got.Metadata.Get(k); v != want {
			t.Errorf("metadata %s = %q, want %q", k, v, want)
		}
	}
	if d := delivery(t, got); d.NumDelivered() != 1 || d.Meta.Sequence.Stream != 1 {
		t.Errorf("NumDelivered %d, stream sequence %d; want 1, 1", d.NumDelivered(), d.Meta.Sequence.Stream)
	}
	got.Ack()

	// From another client: Correlation-Id is the correlation id.
	m := nats.NewMsg(subjectOf("meta"))
	m.Header.Set(jetstream.MsgIDHeader, "other-2")
	m.Header.Set("Correlation-Id", "corr-2")
	if _, err := b.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	got = receive(t, ch)
	if got.UUID != "other-2" || middleware.MessageCorrelationID(got) != "corr-2" {
		t.Errorf("got %s correlation %q, want other-2 corr-2", got.UUID, middleware.MessageCorrelationID(got))
	}
	got.Ack()

	// Without headers: the stream sequence is the id and the correlation id.
	if _, err := b.js.Publish(context.Background(), subjectOf("meta"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	got = receive(t, ch)
	if got.UUID != "3" || middleware.MessageCorrelationID(got) != "3" {
		t.Errorf("got %s correlation %q, want 3 3", got.UUID, middleware.MessageCorrelationID(got))
	}
	got.Ack()
}

// TestWorkContextCause checks that cancelling WorkContext ends the contexts
// of messages out with its cause: the dispatcher tells a shutdown from a
// failure by it.
func TestWorkContextCause(t *testing.T) {
	t.Parallel()
	b := setup(t)
	work, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	sub := b.subscriber(t, watermilljs.Config{WorkContext: work})
	b.publish(t, "work", 1)
	msg := receive(t, subscribe(t, sub, "work"))

	shutdown := errors.New("shutting down")
	stop(shutdown)
	<-msg.Context().Done()
	if cause := context.Cause(msg.Context()); !errors.Is(cause, shutdown) {
		t.Errorf("cause = %v, want the WorkContext's", cause)
	}
	msg.Nack()
}

// TestSubscribeManyTopics is Watermill's TestConcurrentSubscribeMultipleTopics
// with a UUID per message (see TestWatermillConformance): one subscriber,
// many topics of one stream subscribed at once, each getting its own
// messages — the dispatcher's layout.
func TestSubscribeManyTopics(t *testing.T) {
	t.Parallel()
	const topics, perTopic = 20, 100
	b := setup(t)
	sub := b.subscriber(t, watermilljs.Config{Concurrency: 8})
	pub, err := watermilljs.NewPublisher(b.js, watermilljs.PublisherConfig{Subject: subjectOf})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range topics {
		wg.Go(func() {
			topic := fmt.Sprintf("many-%d", i)
			var msgs []*message.Message
			want := map[string]bool{}
			for j := range perTopic {
				id := fmt.Sprintf("%s/%d", topic, j)
				msgs = append(msgs, message.NewMessage(id, []byte(id)))
				want[id] = true
			}
			if err := pub.Publish(topic, msgs...); err != nil {
				t.Error(err)
				return
			}
			ch, err := sub.Subscribe(context.Background(), topic)
			if err != nil {
				t.Error(err)
				return
			}
			timeout := time.After(receiveTimeout)
			for len(want) > 0 {
				select {
				case msg := <-ch:
					if msg.Metadata.Get("nats_subject") != subjectOf(topic) {
						t.Errorf("topic %s got %s from %s", topic, msg.UUID, msg.Metadata.Get("nats_subject"))
					}
					delete(want, msg.UUID)
					msg.Ack()
				case <-timeout:
					t.Errorf("topic %s: %d messages missing", topic, len(want))
					return
				}
			}
		})
	}
	wg.Wait()
}

// WaitSettled that times out again and again, while a message stays out,
// does not leave a goroutine behind per call.
func TestWaitSettledTimeoutsDoNotLeak(t *testing.T) {
	b := setup(t)
	sub := b.subscriber(t, watermilljs.Config{Concurrency: 1})
	b.publish(t, "wait", 1)
	msg := receive(t, subscribe(t, sub, "wait"))
	sub.StopFetching()
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	_ = sub.WaitSettled(expired)
	before := runtime.NumGoroutine()
	for range 100 {
		if err := sub.WaitSettled(expired); err == nil {
			t.Fatal("WaitSettled returned nil with a message out")
		}
	}
	if after := runtime.NumGoroutine(); after > before+5 {
		t.Fatalf("goroutines grew from %d to %d over 100 timed-out WaitSettled calls", before, after)
	}
	msg.Ack()
	if err := sub.WaitSettled(context.Background()); err != nil {
		t.Fatal(err)
	}
}
