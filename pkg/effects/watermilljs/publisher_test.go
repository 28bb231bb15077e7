package watermilljs_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects/watermilljs"
)

func newPublisher(t *testing.T, js jetstream.JetStream, cfg watermilljs.PublisherConfig) *watermilljs.Publisher {
	t.Helper()
	pub, err := watermilljs.NewPublisher(js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	return pub
}

func (b *testBundle) stored(t *testing.T) (msgs uint64) {
	t.Helper()
	s, err := b.js.Stream(context.Background(), testStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func (b *testBundle) storedMsg(t *testing.T, seq uint64) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := b.js.Stream(context.Background(), testStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(context.Background(), seq)
	if err != nil {
		t.Fatalf("message %d: %v", seq, err)
	}
	return m
}

func TestPublish(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pub := newPublisher(t, b.js, watermilljs.PublisherConfig{Subject: subjectOf})
	const n = 50
	var msgs []*message.Message
	for i := range n {
		msg := message.NewMessage(fmt.Sprintf("id-%d", i), fmt.Appendf(nil, `{"n":%d}`, i))
		msg.Metadata.Set("tenant", "acme")
		msgs = append(msgs, msg)
	}
	if err := pub.Publish("pub", msgs...); err != nil {
		t.Fatal(err)
	}
	if got := b.stored(t); got != n {
		t.Fatalf("stream holds %d messages, want %d", got, n)
	}
	for seq := uint64(1); seq <= n; seq++ {
		m := b.storedMsg(t, seq)
		i := seq - 1 // one connection, sent in order: stored in order
		if m.Subject != "t.pub" || m.Header.Get(jetstream.MsgIDHeader) != msgs[i].UUID ||
			m.Header.Get("tenant") != "acme" || string(m.Data) != string(msgs[i].Payload) {
			t.Errorf("stored %d: %s %v %s; want %s with Nats-Msg-Id %s", seq, m.Subject, m.Header, m.Data, msgs[i].Payload, msgs[i].UUID)
		}
	}
}

func TestPublishDefaultSubjectIsTopic(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pub := newPublisher(t, b.js, watermilljs.PublisherConfig{})
	if err := pub.Publish("t.as-is", message.NewMessage("x", nil)); err != nil {
		t.Fatal(err)
	}
	if m := b.storedMsg(t, 1); m.Subject != "t.as-is" {
		t.Errorf("subject %s, want t.as-is", m.Subject)
	}
}

// TestPublishAgainIsStoredOnce is why Nats-Msg-Id is the UUID: a publish
// retried after a lost ack, or a handler run twice, stores the message once.
func TestPublishAgainIsStoredOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pub := newPublisher(t, b.js, watermilljs.PublisherConfig{Subject: subjectOf})
	msg := message.NewMessage("once", []byte("x"))
	for range 3 {
		if err := pub.Publish("dup", msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Publish("dup", msg.Copy()); err != nil {
		t.Fatal(err)
	}
	if got := b.stored(t); got != 1 {
		t.Errorf("stream holds %d messages, want 1", got)
	}
}

// TestPublishSameUUIDTwoTopics pins the other side of it: JetStream
// deduplicates per stream, so one UUID published to two topics of one
// stream is stored once. Fanning out needs a UUID per copy.
func TestPublishSameUUIDTwoTopics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pub := newPublisher(t, b.js, watermilljs.PublisherConfig{Subject: subjectOf})
	msg := message.NewMessage("fan", []byte("x"))
	if err := pub.Publish("one", msg); err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish("two", msg.Copy()); err != nil {
		t.Fatal(err)
	}
	if got := b.stored(t); got != 1 {
		t.Errorf("stream holds %d messages, want 1", got)
	}
}

// TestPublishLeavesOutJetStreamHeaders: metadata of a message received from
// a stream may hold Nats-* headers that would steer the server.
func TestPublishLeavesOutJetStreamHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pub := newPublisher(t, b.js, watermilljs.PublisherConfig{Subject: subjectOf})
	// The premise: this header makes JetStream refuse the message.
	raw := nats.NewMsg(subjectOf("hdr"))
	raw.Header.Set("Nats-Expected-Last-Sequence", "999")
	if _, err := b.js.PublishMsg(context.Background(), raw); err == nil {
		t.Fatal("JetStream took a message with a wrong Nats-Expected-Last-Sequence")
	}

	msg := message.NewMessage("hdr-1", []byte("x"))
	msg.Metadata.Set("Nats-Expected-Last-Sequence", "999")
	msg.Metadata.Set("Nats-Msg-Id", "not-the-uuid")
	if err := pub.Publish("hdr", msg); err != nil {
		t.Fatal(err)
	}
	if id := b.storedMsg(t, 1).Header.Get(jetstream.MsgIDHeader); id != "hdr-1" {
		t.Errorf("Nats-Msg-Id = %s, want the UUID", id)
	}
}

func TestPublishNoStream(t *testing.T) {
	t.Parallel()
	b := setup(t)
	pub := newPublisher(t, b.js, watermilljs.PublisherConfig{})
	err := pub.Publish("nowhere", message.NewMessage("lost-1", nil))
	if !errors.Is(err, jetstream.ErrNoStreamResponse) || !strings.Contains(err.Error(), "lost-1") {
		t.Errorf("err = %v, want ErrNoStreamResponse naming lost-1", err)
	}
}

// silentResponder answers no publish on noack.>: it is interest without a
// stream, so the publishes wait for an ack that never comes. received gets
// one value per message.
func (b *testBundle) silentResponder(t *testing.T) (received <-chan struct{}) {
	t.Helper()
	ch := make(chan struct{}, 100)
	s, err := b.nc.Subscribe("noack.>", func(*nats.Msg) { ch <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Unsubscribe() })
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func TestPublishAckTimeout(t *testing.T) {
	t.Parallel()
	const ackTimeout = 200 * time.Millisecond
	b := setup(t)
	b.silentResponder(t)
	pub := newPublisher(t, b.js, watermilljs.PublisherConfig{
		Subject:    func(topic string) string { return "noack." + topic },
		AckTimeout: ackTimeout,
	})
	start := time.Now()
	err := pub.Publish("x", message.NewMessage("slow-1", nil), message.NewMessage("slow-2", nil))
	took := time.Since(start)
	if err == nil {
		t.Fatal("Publish returned nil without acks")
	}
	for _, want := range []string{"slow-1", "slow-2", "no ack within 200ms"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if took < ackTimeout || took > ackTimeout+5*time.Second {
		t.Errorf("Publish took %s, want about %s", took, ackTimeout)
	}
}

func TestPublisherClose(t *testing.T) {
	t.Parallel()
	const ackTimeout = 300 * time.Millisecond
	b := setup(t)
	received := b.silentResponder(t)
	pub := newPublisher(t, b.js, watermilljs.PublisherConfig{
		Subject:    func(topic string) string { return "noack." + topic },
		AckTimeout: ackTimeout,
	})
	start := time.Now()
	go func() { _ = pub.Publish("x", message.NewMessage("waiting", nil)) }()
	select {
	case <-received: // Publish is now waiting for its ack
	case <-time.After(receiveTimeout):
		t.Fatal("the publish never arrived")
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < ackTimeout {
		t.Errorf("Close returned after %s, before the running Publish (AckTimeout %s) ended", took, ackTimeout)
	}
	if err := pub.Publish("x", message.NewMessage("late", nil)); !errors.Is(err, watermilljs.ErrPublisherClosed) {
		t.Errorf("Publish after Close: %v, want ErrPublisherClosed", err)
	}
	if err := pub.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNewPublisherValidates(t *testing.T) {
	t.Parallel()
	if _, err := watermilljs.NewPublisher(nil, watermilljs.PublisherConfig{}); err == nil {
		t.Error("no error without a JetStream")
	}
	b := setup(t)
	if _, err := watermilljs.NewPublisher(b.js, watermilljs.PublisherConfig{AckTimeout: -time.Second}); err == nil || !strings.Contains(err.Error(), "AckTimeout") {
		t.Errorf("negative AckTimeout: %v, want an error naming AckTimeout", err)
	}
}
