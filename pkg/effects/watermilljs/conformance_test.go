package watermilljs_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects/watermilljs"
)

// The conformance runs map Watermill topic T to subject wmtest.T on one
// stream, and a (consumer group, topic) pair to one durable consumer.
const (
	wmStream = "WMTEST"
	wmPrefix = "wmtest."
)

func wmSubject(topic string) string { return wmPrefix + topic }

// durableName names the durable consumer of a group on a topic. Topics and
// groups may hold characters a consumer name may not ('.', '*', '>',
// spaces), so the name is a digest.
func durableName(group, topic string) string {
	sum := sha256.Sum256([]byte(group + "\x00" + topic))
	return "wm-" + hex.EncodeToString(sum[:16])
}

// conformance is one NATS server shared by every Pub/Sub instance a suite
// creates: instances must see each other's messages and consumers.
type conformance struct {
	nats *testenv.NATS
}

func startConformance(t *testing.T) *conformance {
	t.Helper()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      wmStream,
		Subjects:  []string{wmPrefix + ">"},
		Retention: jetstream.LimitsPolicy, // like EFFECTS: any number of durables read it
		Storage:   jetstream.FileStorage,
	}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	return &conformance{nats: n}
}

// pubSub is one instance, on its own connection, as separate processes
// would be.
func (c *conformance) pubSub(t *testing.T, group string, concurrency int) (message.Publisher, message.Subscriber) {
	t.Helper()
	_, js := c.nats.Connect(t)
	pub, err := watermilljs.NewPublisher(js, watermilljs.PublisherConfig{Subject: wmSubject})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := watermilljs.New(js, watermilljs.Config{
		Stream: wmStream,
		Consumer: func(topic string) jetstream.ConsumerConfig {
			return jetstream.ConsumerConfig{
				Durable:       durableName(group, topic),
				FilterSubject: wmSubject(topic),
				AckPolicy:     jetstream.AckExplicitPolicy,
				// The dispatcher's default: a message lost in a client must
				// not come back in time for the suite's reads to pass.
				AckWait:       30 * time.Second,
				DeliverPolicy: jetstream.DeliverAllPolicy,
				MaxDeliver:    -1,
			}
		},
		Concurrency:     concurrency,
		InProgressEvery: 10 * time.Second,
		// The suite nacks and expects the message back within its read
		// timeout; the delay is configuration, not behaviour under test.
		NackDelay: 0,
	})
	if err != nil {
		t.Fatal(err)
	}
	return pub, sub
}

// TestWatermillConformance runs Watermill's Pub/Sub test suite against the
// Publisher and Subscriber, on the layout the dispatcher uses: one stream,
// one Subscriber for many topics.
//
// It runs the cases tests.TestPubSub runs, in its order and with its
// parallelism (watermill v1.5.1, pubsub/tests/test_pubsub.go; keep the list
// in step when upgrading), except TestConcurrentSubscribeMultipleTopics: that
// case publishes copies of one message, with one UUID, to 20 topics. The
// Publisher sets Nats-Msg-Id to the UUID, and JetStream deduplicates per
// stream, not per subject, so on one stream only the first topic's copy is
// stored, by design (see Publisher). TestSubscribeManyTopics is that case
// with a UUID per copy; TestPublishSameUUIDTwoTopics pins the behaviour.
func TestWatermillConformance(t *testing.T) {
	c := startConformance(t)
	features := tests.Features{
		// A group is a durable consumer per topic; instances of one group
		// share it, as dispatchers of one kind share dispatcher-<kind>.
		ConsumerGroups: true,
		// At least once: a nak, a missed ack or a crash redelivers.
		ExactlyOnceDelivery: false,
		// Up to Concurrency messages are out at once and a nak sends one
		// back behind later ones. (Order with Concurrency 1 and one
		// instance: TestWatermillConformanceOrdered.)
		GuaranteedOrder: false,
		Persistent:      true,
		// Instances share state through JetStream only.
		RequireSingleInstance: false,
		// Every instance of the plain constructor is in the same group, so
		// a new instance continues where the group is: it does not get what
		// the group already acked. A new group does read old messages:
		// TestWatermillConformanceNewGroupReadsHistory.
		NewSubscriberReceivesOldMessages: false,
		// Contexts do not cross NATS; a message's context descends from
		// Config.WorkContext.
		ContextPreserved: false,
		// No RestartServiceCommand: the broker runs in-process, so the
		// suite skips TestReconnect.
	}
	const concurrency = 8
	constructor := func(t *testing.T) (message.Publisher, message.Subscriber) {
		return c.pubSub(t, "default", concurrency)
	}
	cases := []struct {
		name string
		run  func(*testing.T, tests.TestContext, tests.PubSubConstructor)
	}{
		{"TestPublishSubscribe", tests.TestPublishSubscribe},
		{"TestConcurrentSubscribe", tests.TestConcurrentSubscribe},
		// TestConcurrentSubscribeMultipleTopics: see above.
		{"TestResendOnError", tests.TestResendOnError},
		{"TestNoAck", tests.TestNoAck},
		{"TestContinueAfterSubscribeClose", tests.TestContinueAfterSubscribeClose},
		{"TestConcurrentClose", tests.TestConcurrentClose},
		{"TestContinueAfterErrors", tests.TestContinueAfterErrors},
		{"TestPublishSubscribeInOrder", tests.TestPublishSubscribeInOrder},
		{"TestPublisherClose", tests.TestPublisherClose},
		{"TestTopic", tests.TestTopic},
		{"TestMessageCtx", tests.TestMessageCtx},
		{"TestSubscribeCtx", tests.TestSubscribeCtx},
		{"TestNewSubscriberReceivesOldMessages", tests.TestNewSubscriberReceivesOldMessages},
		{"TestReconnect", tests.TestReconnect},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, tests.TestContext{TestID: tests.NewTestID(), Features: features}, constructor)
		})
	}
	t.Run("TestConsumerGroups", func(t *testing.T) {
		t.Parallel()
		tests.TestConsumerGroups(t, tests.TestContext{TestID: tests.NewTestID(), Features: features},
			func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
				return c.pubSub(t, group, concurrency)
			})
	})
}

// TestWatermillConformanceOrdered runs the suite's ordering cases, which
// TestWatermillConformance skips, with Concurrency 1 and one instance: then
// a message is handed out only after the previous one was settled.
func TestWatermillConformanceOrdered(t *testing.T) {
	c := startConformance(t)
	features := tests.Features{
		GuaranteedOrder:                     true,
		GuaranteedOrderWithSingleSubscriber: true,
		Persistent:                          true,
	}
	constructor := func(t *testing.T) (message.Publisher, message.Subscriber) {
		return c.pubSub(t, "ordered", 1)
	}
	for name, run := range map[string]func(*testing.T, tests.TestContext, tests.PubSubConstructor){
		"NoAck":                   tests.TestNoAck,
		"PublishSubscribeInOrder": tests.TestPublishSubscribeInOrder,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			run(t, tests.TestContext{TestID: tests.NewTestID(), Features: features}, constructor)
		})
	}
}

// TestWatermillConformanceNewGroupReadsHistory runs the suite's "new
// subscriber receives old messages" case with every instance in a group of
// its own: a new durable consumer reads the stream from the start, which is
// what other teams' consumers of EFFECTS rely on.
func TestWatermillConformanceNewGroupReadsHistory(t *testing.T) {
	c := startConformance(t)
	features := tests.Features{Persistent: true, NewSubscriberReceivesOldMessages: true}
	var groups atomic.Int64
	tests.TestNewSubscriberReceivesOldMessages(t, tests.TestContext{TestID: tests.NewTestID(), Features: features},
		func(t *testing.T) (message.Publisher, message.Subscriber) {
			return c.pubSub(t, fmt.Sprintf("group-%d", groups.Add(1)), 4)
		})
}
