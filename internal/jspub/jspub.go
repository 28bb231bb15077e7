// Package jspub publishes to JetStream with a PubAck per message, as
// jetstream's PublishMsgAsync does, at a lower cost per message: the
// webhook's effects and the dispatcher's completions go out through it.
//
//   - One subscription takes every answer; a publish is a token in a map,
//     and its caller a [Waiter] told once: no future, channel or timer per
//     message, and the PubAck is read by hand (encoding/json only for an
//     error or anything unusual; FuzzParsePubAck holds the two together).
//   - One batch at a time is in flight (Nagle's rule): a message published
//     while none waits for its PubAck goes out at once; those published
//     while some do are queued, and the queue goes out together as soon as
//     the last PubAck of the batch in flight is in, after [Options.Linger],
//     or once [Options.Batch] are queued. Under load the NATS server then
//     reads many messages and writes many PubAcks in one go instead of a
//     read, a write and a wake-up per message; a message adds at most the
//     round trip of the batch before it, and an idle publisher nothing.
//   - A waiter still waiting when the connection is lost is told at once
//     ([ErrDisconnected]), as jetstream's futures are. One that gives up
//     ([Publisher.Forget]) is never told; [Publisher.Expire] and
//     [Publisher.Abandon] tell waiters an error of the caller's.
package jspub

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/jsondec"
)

// Defaults of [Options].
const (
	// DefaultLinger bounds how long a queued message waits for the batch
	// in flight: a round trip to the NATS server takes far less, unless a
	// PubAck was lost.
	DefaultLinger = 2 * time.Millisecond
	// DefaultBatch sends the queue without waiting further.
	DefaultBatch = 256
)

// ErrDisconnected: the connection to NATS was lost while the message waited
// for its PubAck; whether JetStream stored it is not known.
var ErrDisconnected = errors.New("the connection to NATS was lost before the PubAck")

// Ack is what JetStream answered a stored message, or a duplicate of one
// (with the sequence of the one stored).
type Ack struct {
	Seq       uint64
	Duplicate bool
}

// Waiter is told the answer to one publish, once: from the connection's
// delivery goroutine, the connection watcher, Expire or the publishing call
// itself. It must not block.
type Waiter interface {
	Published(Ack, error)
}

// Options tune a Publisher; zero values take the defaults.
type Options struct {
	Linger time.Duration
	Batch  int
}

// Publisher publishes on one connection. It is safe for concurrent use.
type Publisher struct {
	nc     *nats.Conn
	prefix string // "<inbox>.": reply subjects are prefix + token
	next   atomic.Uint64
	linger time.Duration
	batch  int

	mu      sync.Mutex
	sub     *nats.Subscription
	status  chan nats.Status
	waiting map[uint64]entry
	// inflight counts the messages sent whose waiter is still waiting.
	inflight int
	queue    []queued // waiting to be sent, in order
	spare    []queued // the queue's other buffer
	timer    *time.Timer
	armed    bool   // timer runs for the queue
	sent     []sent // the tokens sent, in order, for Expire
}

type entry struct {
	w    Waiter
	sent bool
}

type queued struct {
	msg   *nats.Msg
	token uint64
}

type sent struct {
	token uint64
	at    time.Time
}

// New returns a Publisher on nc. It does no I/O: it subscribes to its
// answers at the first publish.
func New(nc *nats.Conn, o Options) *Publisher {
	p := &Publisher{nc: nc, prefix: nc.NewInbox() + ".", linger: o.Linger, batch: o.Batch, waiting: make(map[uint64]entry)}
	if p.linger <= 0 {
		p.linger = DefaultLinger
	}
	if p.batch <= 0 {
		p.batch = DefaultBatch
	}
	p.timer = time.AfterFunc(time.Hour, p.flush)
	p.timer.Stop()
	return p
}

// Publish sends msg, with a reply subject of its own (it sets msg.Reply),
// now or with the batch after the one in flight, and tells w its PubAck.
// It returns the token that [Publisher.Forget] takes, or an error (and
// never tells w) when it cannot subscribe to the answers. A message the
// client refuses (too large, the connection closed) is told at once.
func (p *Publisher) Publish(msg *nats.Msg, w Waiter) (uint64, error) {
	tok := p.next.Add(1)
	msg.Reply = p.prefix + strconv.FormatUint(tok, 10)
	p.mu.Lock()
	if err := p.subscribeLocked(); err != nil {
		p.mu.Unlock()
		return 0, err
	}
	p.waiting[tok] = entry{w: w}
	p.queue = append(p.queue, queued{msg, tok})
	if p.inflight > 0 && len(p.queue) < p.batch {
		if !p.armed {
			p.armed = true
			p.timer.Reset(p.linger)
		}
		p.mu.Unlock()
		return tok, nil
	}
	batch := p.takeLocked()
	p.mu.Unlock()
	p.send(batch)
	return tok, nil
}

// takeLocked takes the queue to send: the messages whose waiter still
// waits, now counted in flight.
func (p *Publisher) takeLocked() []queued {
	batch := p.queue
	p.queue, p.spare = p.spare[:0], nil
	if p.armed {
		p.armed = false
		p.timer.Stop()
	}
	// The tokens at the front of sent that are answered already go.
	i := 0
	for i < len(p.sent) && !p.waiting[p.sent[i].token].sent {
		i++
	}
	p.sent = p.sent[:copy(p.sent, p.sent[i:])]
	n := 0
	now := time.Now()
	for _, q := range batch {
		if e, ok := p.waiting[q.token]; ok {
			e.sent = true
			p.waiting[q.token] = e
			p.sent = append(p.sent, sent{q.token, now})
			batch[n] = q
			n++
		}
	}
	p.inflight += n
	return batch[:n]
}

// send publishes a batch taken from the queue. The messages go into the
// connection's buffer one after the other, which its flusher writes out
// together.
func (p *Publisher) send(batch []queued) {
	for _, q := range batch {
		if err := p.nc.PublishMsg(q.msg); err != nil {
			p.answer(q.token, Ack{}, err)
		}
	}
	clear(batch)
	p.mu.Lock()
	if p.spare == nil {
		p.spare = batch[:0]
	}
	p.mu.Unlock()
}

// flush sends the queue at the end of the linger.
func (p *Publisher) flush() {
	p.mu.Lock()
	p.armed = false
	var batch []queued
	if len(p.queue) > 0 {
		batch = p.takeLocked()
	}
	p.mu.Unlock()
	if batch != nil {
		p.send(batch)
	}
}

// removeLocked removes the waiter of token; the queue, if nothing is in
// flight any more, is returned to be sent.
func (p *Publisher) removeLocked(token uint64) (e entry, ok bool, batch []queued) {
	e, ok = p.waiting[token]
	if !ok {
		return e, false, nil
	}
	delete(p.waiting, token)
	if e.sent {
		p.inflight--
		if p.inflight == 0 && len(p.queue) > 0 {
			batch = p.takeLocked()
		}
	}
	return e, true, batch
}

// answer tells the waiter of token, unless it was told or gave up.
func (p *Publisher) answer(token uint64, ack Ack, err error) {
	p.mu.Lock()
	e, ok, batch := p.removeLocked(token)
	p.mu.Unlock()
	if batch != nil {
		p.send(batch)
	}
	if ok {
		e.w.Published(ack, err)
	}
}

// Forget gives up waiting for token's PubAck: its waiter will not be told.
// It is false when the waiter was told (or is being told) already.
func (p *Publisher) Forget(token uint64) bool {
	p.mu.Lock()
	_, ok, batch := p.removeLocked(token)
	p.mu.Unlock()
	if batch != nil {
		p.send(batch)
	}
	return ok
}

// Expire tells err to the waiters of every message sent before t that
// still waits for its PubAck, and returns how many.
func (p *Publisher) Expire(t time.Time, err error) int {
	var told []Waiter
	var batch []queued
	p.mu.Lock()
	i := 0
	for ; i < len(p.sent) && p.sent[i].at.Before(t); i++ {
		e, ok, b := p.removeLocked(p.sent[i].token)
		if ok {
			told = append(told, e.w)
		}
		if b != nil {
			batch = b
		}
	}
	p.sent = p.sent[:copy(p.sent, p.sent[i:])]
	p.mu.Unlock()
	if batch != nil {
		p.send(batch)
	}
	for _, w := range told {
		w.Published(Ack{}, err)
	}
	return len(told)
}

// Close stops taking answers; the waiters still waiting are told
// ErrDisconnected. A later publish subscribes again.
func (p *Publisher) Close() {
	p.mu.Lock()
	sub, status := p.sub, p.status
	p.sub, p.status = nil, nil
	p.mu.Unlock()
	if sub == nil {
		return
	}
	_ = sub.Unsubscribe()
	p.nc.RemoveStatusListener(status) // ends watch, which tells the waiters
}

// subscribeLocked subscribes to the answers at the first publish, and
// watches the connection.
func (p *Publisher) subscribeLocked() error {
	if p.sub != nil {
		return nil
	}
	sub, err := p.nc.Subscribe(p.prefix+"*", p.receive)
	if err != nil {
		return err
	}
	// The answers of many messages in flight must not be dropped as a
	// slow consumer's.
	_ = sub.SetPendingLimits(-1, -1)
	p.sub = sub
	p.status = p.nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	go p.watch(p.status)
	return nil
}

// watch tells every waiter ErrDisconnected when the connection is lost,
// until it is closed or the publisher is.
func (p *Publisher) watch(status chan nats.Status) {
	for {
		s, ok := <-status
		p.Abandon(ErrDisconnected)
		if !ok || s == nats.CLOSED {
			return
		}
	}
}

// Abandon tells err to every waiter, queued or in flight, and returns how
// many; their messages are not sent (or, sent, their PubAcks not awaited).
func (p *Publisher) Abandon(err error) int {
	p.mu.Lock()
	told := make([]Waiter, 0, len(p.waiting))
	for tok, e := range p.waiting {
		told = append(told, e.w)
		delete(p.waiting, tok)
	}
	p.inflight = 0
	p.sent = p.sent[:0]
	p.mu.Unlock()
	for _, w := range told {
		w.Published(Ack{}, err)
	}
	return len(told)
}

// receive takes an answer (a PubAck, or a no-responders status) to its
// waiter.
func (p *Publisher) receive(m *nats.Msg) {
	tok, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, p.prefix), 10, 64)
	if err != nil {
		return
	}
	var ack Ack
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		err = jetstream.ErrNoStreamResponse
	} else {
		ack, err = ParsePubAck(m.Data)
	}
	p.answer(tok, ack, err)
}

// ParsePubAck reads JetStream's answer to a publish: {"stream", "seq",
// "duplicate"} or {"error"}. The common answer is read without
// encoding/json; anything else (an error, an escape) through it.
func ParsePubAck(data []byte) (Ack, error) {
	if ack, ok := parsePubAckFast(data); ok {
		return ack, nil
	}
	return parsePubAckJSON(data)
}

// parsePubAckJSON is ParsePubAck by encoding/json, and its reference: the
// fast path must agree with it (FuzzParsePubAck).
func parsePubAckJSON(data []byte) (Ack, error) {
	var r struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Seq       uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return Ack{}, jetstream.ErrInvalidJSAck
	}
	if r.Error != nil {
		return Ack{}, r.Error
	}
	if r.Stream == "" {
		return Ack{}, jetstream.ErrInvalidJSAck
	}
	return Ack{Seq: r.Seq, Duplicate: r.Duplicate}, nil
}

// parsePubAckFast reads a PubAck with a stream and no error; false hands it
// to parsePubAckJSON.
func parsePubAckFast(data []byte) (Ack, bool) {
	if !jsondec.Valid(data) {
		return Ack{}, false
	}
	i := jsondec.SkipSpace(data, 0)
	if data[i] != '{' {
		return Ack{}, false
	}
	d := jsondec.New(data)
	var ack Ack
	var seen [3]bool // stream, seq, duplicate
	stream := false
	_, ok := d.Object(i, func(key []byte, v int) (int, bool) {
		switch string(key) {
		case "stream":
			if seen[0] {
				return 0, false
			}
			seen[0] = true
			s, end, ok := d.PlainString(v)
			stream = ok && len(s) > 0
			return end, ok
		case "seq":
			if seen[1] {
				return 0, false
			}
			seen[1] = true
			end := d.Skip(v)
			n, err := strconv.ParseUint(string(data[v:end]), 10, 64)
			ack.Seq = n
			return end, err == nil
		case "duplicate":
			if seen[2] {
				return 0, false
			}
			seen[2] = true
			switch data[v] {
			case 't':
				ack.Duplicate = true
				return v + len("true"), true
			case 'f':
				return v + len("false"), true
			}
			return 0, false
		}
		if jsondec.FoldsTo(key, "stream", "seq", "duplicate", "error") {
			return 0, false
		}
		return d.Skip(v), true
	})
	return ack, ok && !d.Failed() && stream
}
