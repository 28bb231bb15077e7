// Package watermilljs is a Watermill Subscriber and Publisher over
// JetStream, written on nats.go's jetstream package: the Subscriber reads
// durable pull consumers, the Publisher stores messages with Nats-Msg-Id set
// to their UUID. Both pass Watermill's Pub/Sub conformance suite, but for
// the case that gives copies in several topics one UUID (see [Publisher]).
//
// It exists because watermill-nats acks a message when Watermill's client
// timeout fires, deletes durable consumers on Close, and handles one message
// at a time. Here:
//   - a topic is a durable consumer that is bound to, created or updated
//     (internal/consume), never deleted; one lost while it is read (deleted,
//     or with the server's store) is created again where it was;
//   - up to Concurrency messages of one topic are handed out at once, and the
//     next is handed out only when one is settled. The iterator pulls ahead
//     by up to Concurrency messages, whose ack timers run while they wait
//     for a free slot (so AckWait must cover a wait for a slot, not only a
//     handler run);
//   - a message is acked only when the handler acks it; a Nack, a panic or a
//     shutdown gives it back to the stream;
//   - while a message is out, InProgress is sent so long handlers keep it;
//   - the handler may ask, through [DeliveryOf], for a nak delay or for the
//     message to be terminated instead of acked;
//   - a message's metadata travels as NATS headers, and its context ends once
//     it is acked or nacked, as Watermill's Subscriber contract says.
//
// Stopping gracefully is StopFetching, then WaitSettled, then Close: Close
// alone gives back (naks) what handlers still hold.
package watermilljs

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

	"github.com/effects-run/effects/internal/consume"
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

	mu        sync.Mutex
	closed    bool
	stopping  chan struct{}
	closing   chan struct{} // closed by Close: give back what is still out
	closeOnce sync.Once
	subs      sync.WaitGroup // fetch loops
	out       sync.WaitGroup // messages handed out and not settled

	allSettledOnce sync.Once
	allSettled     chan struct{} // closed once fetch loops ended and all is settled
}

var _ message.Subscriber = (*Subscriber)(nil)

// ErrClosed is returned by Subscribe after Close.
var ErrClosed = errors.New("watermilljs: subscriber closed")

// New returns a subscriber reading consumers of cfg.Stream through js.
func New(js jetstream.JetStream, cfg Config) (*Subscriber, error) {
	if cfg.Stream == "" || cfg.Consumer == nil {
		return nil, errors.New("watermilljs: Stream and Consumer are required")
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
	return &Subscriber{js: js, cfg: cfg, stopping: make(chan struct{}), closing: make(chan struct{})}, nil
}

// Subscribe binds to, creates or updates the topic's durable consumer and
// returns the channel its messages arrive on. The channel is closed once
// fetching stops (ctx cancelled, [Subscriber.StopFetching] or Close).
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	s.subs.Add(1)
	s.mu.Unlock()

	cc := s.cfg.Consumer(topic)
	r, err := consume.Open(ctx, s.js, consume.Config{Stream: s.cfg.Stream, Consumer: cc, Buffer: s.cfg.Concurrency, Logger: s.cfg.Logger})
	if err != nil {
		s.subs.Done()
		return nil, fmt.Errorf("watermilljs: %w", err)
	}
	out := make(chan *message.Message)
	go s.fetch(ctx, r, out)
	return out, nil
}

// fetch pulls a message whenever a slot is free and hands it out.
func (s *Subscriber) fetch(ctx context.Context, r *consume.Reader, out chan<- *message.Message) {
	defer s.subs.Done()
	defer close(out)
	slots := make(chan struct{}, s.cfg.Concurrency)
	// Stop the reader when asked to, which unblocks Next: what it pulled
	// ahead comes out of Next, and Release gives it back at once.
	stopCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stopCtx.Done():
		case <-s.stopping:
		}
		r.Stop()
	}()
	for {
		select {
		case slots <- struct{}{}:
		case <-stopCtx.Done():
			r.Release(nil)
			return
		case <-s.stopping:
			r.Release(nil)
			return
		}
		jm, err := r.Next(context.Background())
		if err != nil {
			<-slots
			r.Release(nil)
			return // stopped, or the connection closed
		}
		if stopCtx.Err() != nil || s.isStopping() {
			// Stopped while Next waited: hand nothing more out.
			_ = jm.Nak()
			<-slots
			r.Release(nil)
			return
		}
		msg, d := s.toMessage(jm)
		s.out.Add(1)
		go s.settle(msg, d, slots)
		select {
		case out <- msg:
		case <-stopCtx.Done():
			d.giveBack(msg)
		case <-s.stopping:
			d.giveBack(msg)
		}
	}
}

func (s *Subscriber) isStopping() bool {
	select {
	case <-s.stopping:
		return true
	default:
		return false
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
	// Headers are the metadata, as the Publisher writes metadata as headers.
	for k, v := range jm.Headers() {
		if len(v) > 0 {
			msg.Metadata.Set(k, v[0])
		}
	}
	msg.Metadata.Set("nats_subject", jm.Subject())
	// SetCorrelationID keeps one already set: a Watermill publisher's
	// correlation_id header first, then another client's Correlation-Id,
	// then the message id.
	if corr := jm.Headers().Get("Correlation-Id"); corr != "" {
		middleware.SetCorrelationID(corr, msg)
	}
	middleware.SetCorrelationID(id, msg)
	// Watermill's contract: the context ends when the message is acked or
	// nacked (settle cancels it), and a cancelled WorkContext ends it with
	// its cause.
	ctx, cancel := context.WithCancelCause(context.WithValue(s.cfg.WorkContext, deliveryKey{}, d))
	d.cancel = cancel
	msg.SetContext(ctx)
	return msg, d
}

// settle waits for the router's verdict on msg and tells JetStream, sending
// InProgress meanwhile. On Close it gives back a message still out.
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
			s.settled(d, false)
			return
		case <-msg.Nacked():
			s.settled(d, true)
			return
		case <-tick:
			if err := d.Msg.InProgress(); err != nil {
				s.cfg.Logger.Warn("jetstream in-progress", "subject", d.Msg.Subject(), "error", err)
			}
		case <-s.closing:
			// Nobody is left to settle it, and InProgress must not hold it
			// for a closed subscriber: give it back now, unless the handler
			// settled it meanwhile (Nack fails once it was acked).
			select {
			case <-msg.Acked():
				s.settled(d, false)
				return
			case <-msg.Nacked():
				s.settled(d, true)
				return
			default:
			}
			if !msg.Nack() {
				s.settled(d, false)
				return
			}
			d.cancel(ErrClosed)
			s.report(d, d.Msg.Nak())
			return
		}
	}
}

// settled applies the router's verdict and ends the message's context.
func (s *Subscriber) settled(d *Delivery, nacked bool) {
	s.report(d, d.apply(nacked, s.cfg.NackDelay))
	d.cancel(errSettled)
}

// errSettled is the cause of a message's context once it was acked or
// nacked.
var errSettled = errors.New("watermilljs: message settled")

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

// WaitSettled, after StopFetching, waits until the fetch loops have ended
// and every message they handed out is settled, or ctx ends. The fetch
// loops come first: one may still hand out a message it pulled as
// StopFetching was called, and counting it after the wait began would let
// WaitSettled return too early (and is a WaitGroup misuse). However often
// it is called and times out, one goroutine waits, and it ends once
// everything is settled (Close settles everything).
func (s *Subscriber) WaitSettled(ctx context.Context) error {
	s.allSettledOnce.Do(func() {
		s.allSettled = make(chan struct{})
		go func() { s.subs.Wait(); s.out.Wait(); close(s.allSettled) }()
	})
	select {
	case <-s.allSettled:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Close stops fetching, gives back (naks without delay) every message still
// out, ending its context with [ErrClosed], and returns once nothing is
// held. For a graceful stop, call StopFetching and WaitSettled first. It
// never deletes a consumer: durable consumers outlive every process.
func (s *Subscriber) Close() error {
	s.StopFetching()
	s.subs.Wait()
	s.closeOnce.Do(func() { close(s.closing) })
	s.out.Wait()
	return nil
}

type deliveryKey struct{}

// Delivery is the JetStream side of a message from a [Subscriber]: the
// message, its metadata, and how the handler wants it settled.
type Delivery struct {
	Msg  jetstream.Msg
	Meta *jetstream.MsgMetadata

	cancel context.CancelCauseFunc // ends the message's context

	mu       sync.Mutex
	nakDelay time.Duration
	hasDelay bool
	term     bool
	retry    bool
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
// MSG_TERMINATED advisory published) when the router acks it. It sends a
// plain Term without a reason: nats-server before 2.10 ignores a Term with
// a reason and redelivers the message.
func (d *Delivery) Terminate() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.term = true
}

// giveBack nacks a message that was never handed out, for redelivery at
// once: no handler saw it, so the nack delay does not apply.
func (d *Delivery) giveBack(msg *message.Message) {
	d.RetryAfter(0)
	msg.Nack()
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
		return d.Msg.Term()
	default:
		return d.Msg.Ack()
	}
}
