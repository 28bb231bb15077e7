package watermilljs

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultAckTimeout is how long [Publisher.Publish] waits for JetStream's
// acks when [PublisherConfig.AckTimeout] is not set.
const DefaultAckTimeout = 10 * time.Second

// PublisherConfig configures a [Publisher].
type PublisherConfig struct {
	// Subject returns the NATS subject a topic's messages are published on.
	// A stream must capture it. Default: the topic itself.
	Subject func(topic string) string
	// AckTimeout bounds how long one Publish call waits for JetStream to
	// ack all of its messages. Default [DefaultAckTimeout] (10s).
	AckTimeout time.Duration
}

// Publisher implements message.Publisher over JetStream: each message is
// stored with Nats-Msg-Id = its UUID, so publishing the same message again
// (a retry after a lost ack, a handler run twice) is stored once within the
// stream's duplicate window. The UUID is what [Subscriber] hands out as the
// message's UUID, so a team publishing effects or completions sets it to
// the Nats-Msg-Id the wire format asks for (the Hasura event id;
// <effect_id>:<event_id>:<status>).
//
// JetStream deduplicates per stream, not per subject: copies of one message
// (msg.Copy keeps the UUID) published to two topics of one stream within
// the duplicate window are stored once, and Publish reports success for
// both. Give each copy its own UUID to fan out.
//
// The JetStream context should have an async publish timeout
// (jetstream.WithPublishAsyncTimeout; natsconn.Connect sets one): Publish
// stops waiting after AckTimeout, but an ack that never comes holds its
// async-publish slot until that timeout.
type Publisher struct {
	js  jetstream.JetStream
	cfg PublisherConfig

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup // Publish calls running
}

var _ message.Publisher = (*Publisher)(nil)

// ErrPublisherClosed is returned by Publish after Close.
var ErrPublisherClosed = errors.New("watermilljs: publisher closed")

// NewPublisher returns a publisher that publishes through js. It does not
// own js's connection: Close leaves it open.
func NewPublisher(js jetstream.JetStream, cfg PublisherConfig) (*Publisher, error) {
	if js == nil {
		return nil, errors.New("watermilljs: NewPublisher needs a JetStream")
	}
	if cfg.AckTimeout < 0 {
		return nil, fmt.Errorf("watermilljs: PublisherConfig.AckTimeout is negative (%s)", cfg.AckTimeout)
	}
	if cfg.AckTimeout == 0 {
		cfg.AckTimeout = DefaultAckTimeout
	}
	if cfg.Subject == nil {
		cfg.Subject = func(topic string) string { return topic }
	}
	return &Publisher{js: js, cfg: cfg}, nil
}

// Publish stores msgs on the topic's subject and returns once JetStream has
// acked every one of them, or the first publish failed and the ones sent
// before it were answered, or AckTimeout passed. Messages are sent without
// waiting on each other (PublishMsgAsync), so a batch costs about one round
// trip. The error names every message that JetStream did not confirm; such
// a message may still have been stored, and publishing it again is safe
// because its Nats-Msg-Id deduplicates it.
//
// A message's metadata becomes NATS headers, its payload the data. NATS
// trims a header value's surrounding spaces and turns line breaks into
// spaces; a key that is not a valid header name fails the publish. Metadata
// keys starting with "Nats-" are not sent: those headers are instructions to
// JetStream (expected sequence, rollup, TTL, ...) and a message received
// from one stream and republished must not carry them by accident.
// Messages' contexts are not consulted.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrPublisherClosed
	}
	p.inflight.Add(1)
	p.mu.Unlock()
	defer p.inflight.Done()

	subject := p.cfg.Subject(topic)
	type sent struct {
		msg *message.Message
		fut jetstream.PubAckFuture
	}
	pending := make([]sent, 0, len(msgs))
	var errs []error
	for _, msg := range msgs {
		fut, err := p.js.PublishMsgAsync(toNATS(subject, msg))
		if err != nil {
			// Watermill's contract: later messages are not published once
			// one fails. Those already sent are still waited for below.
			errs = append(errs, fmt.Errorf("watermilljs: publish message %s to %s: %w", msg.UUID, subject, err))
			break
		}
		pending = append(pending, sent{msg, fut})
	}

	timeout := time.NewTimer(p.cfg.AckTimeout)
	defer timeout.Stop()
	timedOut := false
	for _, s := range pending {
		if timedOut {
			// Collect what has been answered meanwhile without waiting more.
			select {
			case <-s.fut.Ok():
			case err := <-s.fut.Err():
				errs = append(errs, fmt.Errorf("watermilljs: publish message %s to %s: %w", s.msg.UUID, subject, err))
			default:
				errs = append(errs, fmt.Errorf("watermilljs: publish message %s to %s: no ack within %s", s.msg.UUID, subject, p.cfg.AckTimeout))
			}
			continue
		}
		select {
		case <-s.fut.Ok():
		case err := <-s.fut.Err():
			errs = append(errs, fmt.Errorf("watermilljs: publish message %s to %s: %w", s.msg.UUID, subject, err))
		case <-timeout.C:
			timedOut = true
			errs = append(errs, fmt.Errorf("watermilljs: publish message %s to %s: no ack within %s", s.msg.UUID, subject, p.cfg.AckTimeout))
		}
	}
	return errors.Join(errs...)
}

// toNATS builds the NATS message for msg.
func toNATS(subject string, msg *message.Message) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: msg.Payload, Header: make(nats.Header, len(msg.Metadata)+1)}
	for k, v := range msg.Metadata {
		if strings.HasPrefix(k, "Nats-") {
			continue
		}
		m.Header.Set(k, v)
	}
	if msg.UUID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msg.UUID)
	}
	return m
}

// Close makes later Publish calls fail with [ErrPublisherClosed] and waits
// for the running ones, each bounded by AckTimeout, to return. Publish waits
// for its acks before returning, so nothing is left unsent. The connection
// stays open: it belongs to the caller.
func (p *Publisher) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.inflight.Wait()
	return nil
}
