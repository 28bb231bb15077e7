package watermilljs_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects/watermilljs"
)

// The targeted tests use stream T on t.>, topic X on subject t.X, durable
// consumer c-X: one stream for many topics, like EFFECTS.
const testStream = "T"

func subjectOf(topic string) string { return "t." + topic }
func durableOf(topic string) string { return "c-" + topic }

// receiveTimeout is how long a test waits for a message it expects. It is
// well under the AckWait of consumerConfig, so a message that comes back only
// because its ack timer ran out fails the test.
const receiveTimeout = 10 * time.Second

type testBundle struct {
	nats *testenv.NATS
	nc   *nats.Conn
	js   jetstream.JetStream
}

// setup starts a NATS server of the test's own with stream T.
func setup(t *testing.T) *testBundle {
	t.Helper()
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     testStream,
		Subjects: []string{"t.>"},
		Storage:  jetstream.FileStorage,
	}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	return &testBundle{nats: n, nc: nc, js: js}
}

// consumerConfig is the durable consumer of topic, acked explicitly, never
// giving up on a message, with the given AckWait (30s if 0).
func consumerConfig(ackWait time.Duration) func(topic string) jetstream.ConsumerConfig {
	if ackWait == 0 {
		ackWait = 30 * time.Second
	}
	return func(topic string) jetstream.ConsumerConfig {
		return jetstream.ConsumerConfig{
			Durable:       durableOf(topic),
			FilterSubject: subjectOf(topic),
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       ackWait,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			MaxDeliver:    -1,
		}
	}
}

// subscriber returns a subscriber on stream T, closed when the test ends.
// cfg.Consumer defaults to consumerConfig(0).
func (b *testBundle) subscriber(t *testing.T, cfg watermilljs.Config) *watermilljs.Subscriber {
	t.Helper()
	cfg.Stream = testStream
	if cfg.Consumer == nil {
		cfg.Consumer = consumerConfig(0)
	}
	sub, err := watermilljs.New(b.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

func subscribe(t *testing.T, sub *watermilljs.Subscriber, topic string) <-chan *message.Message {
	t.Helper()
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	return ch
}

// publish stores n messages on topic with plain nats.go, ids <topic>-1 ...,
// and returns the ids.
func (b *testBundle) publish(t *testing.T, topic string, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", topic, i+1)
		m := nats.NewMsg(subjectOf(topic))
		m.Data = []byte(ids[i])
		m.Header.Set(jetstream.MsgIDHeader, ids[i])
		if _, err := b.js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	return ids
}

func receive(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case msg, ok := <-ch:
		if !ok {
			t.Fatal("message channel closed")
		}
		return msg
	case <-time.After(receiveTimeout):
		t.Fatalf("no message in %s", receiveTimeout)
		return nil
	}
}

// expectClosed reads ch until it is closed; every message still on it is
// returned (unsettled).
func expectClosed(t *testing.T, ch <-chan *message.Message) []*message.Message {
	t.Helper()
	var rest []*message.Message
	for {
		select {
		case msg, ok := <-ch:
			if !ok {
				return rest
			}
			rest = append(rest, msg)
		case <-time.After(receiveTimeout):
			t.Fatalf("message channel not closed in %s", receiveTimeout)
		}
	}
}

func (b *testBundle) consumerInfo(t *testing.T, topic string) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := b.js.Consumer(ctx, testStream, durableOf(topic))
	if err != nil {
		t.Fatalf("consumer %s: %v", durableOf(topic), err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	return info
}

// eventually polls the server's view until cond holds. Acks and naks are
// one-way messages, so there is no reply to wait for instead.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func delivery(t *testing.T, msg *message.Message) *watermilljs.Delivery {
	t.Helper()
	d, ok := watermilljs.DeliveryOf(msg)
	if !ok {
		t.Fatal("message has no delivery")
	}
	return d
}
