// Package jetstreamsub is a Watermill Subscriber over a durable JetStream
// pull consumer, written on nats.go's jetstream package.
//
// It exists because watermill-nats acks a message when Watermill's client
// timeout fires, deletes durable consumers on Close, and handles one message
// at a time. Here:
//   - a topic is a durable consumer that is created or updated, never deleted;
//   - up to Concurrency messages of one topic are handed out at once, and no
//     more are pulled until one is settled (the pull buffer stays near the
//     worker count, so ack timers do not run out in a client buffer);
//   - a message is acked only when the handler acks it; a Nack, a panic or a
//     shutdown gives it back to the stream;
//   - while a message is out, InProgress is sent so long handlers keep it;
//   - the handler may ask, through [DeliveryOf], for a nak delay or for the
//     message to be terminated instead of acked.
package jetstreamsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go/jetstream"
)

// Config configures a [Subscriber].
type Config struct {
	// Stream is the stream the consumers read.
	Stream string
	// Consumer returns the durable consumer for a topic. Its Durable name
	// must be set.
	Consumer func(topic string) jetstream.ConsumerConfig
	// Concurrency is how many messages of one topic may be out (handed to
	// the router and not yet settled) at once. Default 1.
	Concurrency int
	// WorkContext is the parent of every message's context. Cancel it (with
	// a cause) to interrupt handlers on a hard shutdown. Default
	// context.Background().
	WorkContext context.Context
	// InProgressEvery is how often InProgress is sent for a message that is
	// out. 0 disables it; set it well under the consumer's AckWait.
	InProgressEvery time.Duration
	// NackDelay is the redelivery delay of a Nack that set none.
	NackDelay time.Duration
	// Logger gets settle errors.
	Logger *slog.Logger
}

// Subscriber implements message.Subscriber.
type Subscriber struct {
	js  jetstream.JetStream
	cfg Config

	mu       sync.Mutex
	closed   bool
	stopping chan struct{}
	subs     sync.WaitGroup // fetch loops
	out      sync.WaitGroup // messages handed out and not settled
}

var _ message.Subscriber = (*Subscriber)(nil)

// ErrClosed is returned by Subscribe after Close.
var ErrClosed = errors.New("jetstreamsub: subscriber closed")

// New returns a subscriber reading consumers of cfg.Stream through js.
func New(js jetstream.JetStream, cfg Config) (*Subscriber, error) {
	if cfg.Stream == "" || cfg.Consumer == nil {
		return nil, errors.New("jetstreamsub: Stream and Consumer are required")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
	}
	if cfg.WorkContext == nil {
		cfg.WorkContext = context.Background()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Subscriber{js: js, cfg: cfg, stopping: make(chan struct{})}, nil
}

// Subscribe creates or updates the topic's durable consumer and returns the
// channel its messages arrive on. The channel is closed once fetching stops
// (ctx cancelled, [Subscriber.StopFetching] or Close).
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.subs.Add(1)
	s.mu.Unlock()

	cc := s.cfg.Consumer(topic)
	cons, err := s.js.CreateOrUpdateConsumer(ctx, s.cfg.Stream, cc)
	if err != nil {
		s.subs.Done()
		return nil, fmt.Errorf("jetstreamsub: consumer %s on %s: %w", cc.Durable, s.cfg.Stream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(s.cfg.Concurrency))
	if err != nil {
		s.subs.Done()
		return nil, fmt.Errorf("jetstreamsub: consume %s: %w", cc.Durable, err)
	}
	out := make(chan *message.Message)
	go s.fetch(ctx, it, out)
	return out, nil
}

// fetch pulls a message whenever a slot is free and hands it out.
func (s *Subscriber) fetch(ctx context.Context, it jetstream.MessagesContext, out chan<- *message.Message) {
	defer s.subs.Done()
	defer close(out)
	slots := make(chan struct{}, s.cfg.Concurrency)
	// Stop the iterator when asked to, which unblocks Next.
	stopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stopCtx.Done():
		case <-s.stopping:
		}
		it.Stop()
	}()
	for {
		select {
		case slots <- struct{}{}:
		case <-stopCtx.Done():
			return
		case <-s.stopping:
			return
		}
		jm, err := it.Next()
		if err != nil {
			<-slots
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			// Missing heartbeats, a reconnect: the iterator recovers by itself.
			s.cfg.Logger.Warn("jetstream fetch", "error", err)
			continue
		}
		msg, d := s.toMessage(jm)
		s.out.Add(1)
		go s.settle(msg, d, slots)
		select {
		case out <- msg:
		case <-s.stopping:
			// Nobody will read it: give it back now.
			msg.Nack()
		}
	}
}

func (s *Subscriber) toMessage(jm jetstream.Msg) (*message.Message, *Delivery) {
	meta, _ := jm.Metadata()
	d := &Delivery{Msg: jm, Meta: meta}
	id := jm.Headers().Get(jetstream.MsgIDHeader)
	if id == "" && meta != nil {
		id = strconv.FormatUint(meta.Sequence.Stream, 10)
	}
	msg := message.NewMessage(id, jm.Data())
	msg.Metadata.Set("nats_subject", jm.Subject())
	if corr := jm.Headers().Get("Correlation-Id"); corr != "" {
		middleware.SetCorrelationID(corr, msg)
	} else {
		middleware.SetCorrelationID(id, msg)
	}
	msg.SetContext(context.WithValue(s.cfg.WorkContext, deliveryKey{}, d))
	return msg, d
}

// settle waits for the router's verdict on msg and tells JetStream, sending
// InProgress meanwhile.
func (s *Subscriber) settle(msg *message.Message, d *Delivery, slots <-chan struct{}) {
	defer s.out.Done()
	defer func() { <-slots }()
	var tick <-chan time.Time
	if s.cfg.InProgressEvery > 0 {
		t := time.NewTicker(s.cfg.InProgressEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-msg.Acked():
			s.report(d, d.apply(false, s.cfg.NackDelay))
			return
		case <-msg.Nacked():
			s.report(d, d.apply(true, s.cfg.NackDelay))
			return
		case <-tick:
			if err := d.Msg.InProgress(); err != nil {
				s.cfg.Logger.Warn("jetstream in-progress", "subject", d.Msg.Subject(), "error", err)
			}
		}
	}
}

func (s *Subscriber) report(d *Delivery, err error) {
	if err != nil {
		// The message will be redelivered after AckWait; the handler
		// outcome is idempotent downstream (completions are deduplicated).
		s.cfg.Logger.Warn("jetstream settle", "subject", d.Msg.Subject(), "error", err)
	}
}

// StopFetching stops pulling new messages on every topic; messages already
// out are still settled. Output channels close.
func (s *Subscriber) StopFetching() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.stopping)
	}
}

// WaitSettled waits until every message handed out is settled, or ctx ends.
func (s *Subscriber) WaitSettled(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.out.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Close stops fetching and waits for the fetch loops to end. It never
// deletes a consumer: durable consumers outlive every process.
func (s *Subscriber) Close() error {
	s.StopFetching()
	s.subs.Wait()
	return nil
}

type deliveryKey struct{}

// Delivery is the JetStream side of a message from a [Subscriber]: the
// message, its metadata, and how the handler wants it settled.
type Delivery struct {
	Msg  jetstream.Msg
	Meta *jetstream.MsgMetadata

	mu        sync.Mutex
	nakDelay  time.Duration
	hasDelay  bool
	term      bool
	termCause string
	retry     bool
}

// DeliveryOf returns the delivery of a message from a [Subscriber].
func DeliveryOf(msg *message.Message) (*Delivery, bool) {
	d, ok := msg.Context().Value(deliveryKey{}).(*Delivery)
	return d, ok
}

// NumDelivered is how many times JetStream delivered this message, from 1.
func (d *Delivery) NumDelivered() int {
	if d.Meta == nil {
		return 1
	}
	return int(d.Meta.NumDelivered)
}

// RetryAfter asks that the message be redelivered after delay, whether the
// router acks or nacks it.
func (d *Delivery) RetryAfter(delay time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.retry, d.nakDelay, d.hasDelay = true, delay, true
}

// Terminate asks that the message be terminated (never redelivered, and a
// MSG_TERMINATED advisory published) with reason when the router acks it.
func (d *Delivery) Terminate(reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.term, d.termCause = true, reason
}

// apply performs the settlement: for an ack, Term or Ack (or a nak when
// RetryAfter was asked); for a nack, a nak with the asked or default delay.
func (d *Delivery) apply(nacked bool, defaultDelay time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case nacked || d.retry:
		delay := defaultDelay
		if d.hasDelay {
			delay = d.nakDelay
		}
		if delay <= 0 {
			return d.Msg.Nak()
		}
		return d.Msg.NakWithDelay(delay)
	case d.term:
		return d.Msg.TermWithReason(d.termCause)
	default:
		return d.Msg.Ack()
	}
}
