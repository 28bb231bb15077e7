package ingest

// The webhook's publisher: each request's effect goes to JetStream with a
// reply subject of its own, and the request waits for its own PubAck (stored,
// or a duplicate with the original sequence), as with jetstream's
// PublishMsgAsync. Two things differ, both for cost (docs/architecture.md,
// "The webhook's publisher"):
//
//   - One batch at a time is in flight (Nagle's rule): a request that finds
//     no effect waiting for its ack sends its own at once; one that finds
//     a batch in flight queues its effect, and the queue goes out together
//     as soon as the last ack of that batch is in (or after publishLinger,
//     or once publishBatch are queued). Under load the messages then reach
//     the NATS server in one write, and their PubAcks come back in one: the
//     server's read, write and wake-ups per request were most of its extra
//     cost on the webhook path. A request adds at most the round trip of
//     the batch before it; an idle ingest adds nothing.
//   - The PubAck is read by hand (jsondec; encoding/json only for an error
//     or anything unusual), each request waits on a pooled waiter with a
//     pooled timer, and no future or channel is made per publish.

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/jsondec"
)

const (
	// publishLinger bounds how long a queued effect waits for the batch in
	// flight to be answered: a round trip to the NATS server takes far
	// less, unless an ack was lost.
	publishLinger = 2 * time.Millisecond
	// publishBatch sends the queue without waiting further.
	publishBatch = 256
)

// errPublishTimeout is (wrapped) the error of a publish not acked in time.
var errPublishTimeout = errors.New("no ack")

// errPubDisconnected: the connection to NATS was lost while the request
// waited for its PubAck; whether JetStream stored the message is not known.
var errPubDisconnected = errors.New("the connection to NATS was lost before the ack")

// pubAck is what JetStream answered a stored (or duplicate) message.
type pubAck struct {
	seq       uint64
	duplicate bool
}

// effectPublisher is how the webhook hands an effect message to JetStream.
type effectPublisher interface {
	// publish sends msg (without a reply subject) and returns its PubAck,
	// or why there is none by timeout.
	publish(msg *nats.Msg, timeout time.Duration) (pubAck, error)
}

// pubWait is one request while it waits for its PubAck. Pooled: only the
// waiting set refers to it, never a queue or a batch being sent, so a
// request that gave up can return it at once.
type pubWait struct {
	token uint64
	sent  bool // its message is in flight (counted in inflight)
	ack   pubAck
	err   error
	done  chan struct{} // one send, by whoever removed it from waiting
	// lead wakes the request while it leads the queue.
	lead chan struct{}
}

var pubWaitPool = sync.Pool{New: func() any {
	return &pubWait{done: make(chan struct{}, 1), lead: make(chan struct{}, 1)}
}}

var timerPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// natsPublisher is the effectPublisher on a NATS connection.
type natsPublisher struct {
	nc     *nats.Conn
	prefix string // "<inbox>.": reply subjects are prefix + token
	next   atomic.Uint64
	// linger and batch are publishLinger and publishBatch (tests change
	// them).
	linger time.Duration
	batch  int

	mu     sync.Mutex
	sub    *nats.Subscription
	status chan nats.Status
	// waiting holds every request that waits for its ack, queued or sent.
	waiting map[uint64]*pubWait
	// inflight counts the sent messages whose request still waits.
	inflight int
	queue    []queued // waiting to be sent, in order
	spare    []queued // the queue's other buffer
	leader   *pubWait // the request that sends the queue, nil when it is empty
}

// queued is a message to send and the token of its request.
type queued struct {
	msg   *nats.Msg
	token uint64
}

func newNATSPublisher(nc *nats.Conn) *natsPublisher {
	return &natsPublisher{nc: nc, prefix: nc.NewInbox() + ".", linger: publishLinger, batch: publishBatch,
		waiting: make(map[uint64]*pubWait)}
}

func (p *natsPublisher) publish(msg *nats.Msg, timeout time.Duration) (pubAck, error) {
	timer := timerPool.Get().(*time.Timer)
	timer.Reset(timeout)
	defer func() {
		timer.Stop()
		timerPool.Put(timer)
	}()
	w := pubWaitPool.Get().(*pubWait)
	select { // a wake-up that came too late for this waiter's last lead
	case <-w.lead:
	default:
	}
	w.ack, w.err, w.sent = pubAck{}, nil, false
	w.token = p.next.Add(1)
	msg.Reply = p.prefix + strconv.FormatUint(w.token, 10)

	p.mu.Lock()
	if err := p.subscribeLocked(); err != nil {
		p.mu.Unlock()
		pubWaitPool.Put(w)
		return pubAck{}, err
	}
	p.waiting[w.token] = w
	p.queue = append(p.queue, queued{msg, w.token})
	leads := p.leader == nil
	if leads {
		p.leader = w
	} else {
		p.wakeLeaderLocked()
	}
	ready := p.inflight == 0 || len(p.queue) >= p.batch
	p.mu.Unlock()

	if leads {
		if !ready {
			p.lead(w)
		}
		p.send()
	}

	select {
	case <-w.done:
	case <-timer.C:
		if p.forget(w) {
			w.err = fmt.Errorf("%w within %s (EFFECTS_PUBLISH_TIMEOUT)", errPublishTimeout, timeout)
		} else {
			<-w.done // answered meanwhile: the answer stands
		}
	}
	ack, err := w.ack, w.err
	pubWaitPool.Put(w)
	return ack, err
}

// wakeLeaderLocked wakes the leader when the queue need wait no longer.
func (p *natsPublisher) wakeLeaderLocked() {
	if p.leader != nil && (p.inflight == 0 || len(p.queue) >= p.batch) {
		select {
		case p.leader.lead <- struct{}{}:
		default:
		}
	}
}

// lead waits, as the leader, until the batch in flight is answered, the
// queue is full or the linger passed.
func (p *natsPublisher) lead(w *pubWait) {
	t := timerPool.Get().(*time.Timer)
	t.Reset(p.linger)
	select {
	case <-w.lead:
	case <-t.C:
	}
	t.Stop()
	timerPool.Put(t)
}

// send sends the queue as the leader and ends its leadership. The messages
// go into the connection's buffer one after the other, which its flusher
// writes out together. A message whose request gave up meanwhile is not
// sent.
func (p *natsPublisher) send() {
	p.mu.Lock()
	batch := p.queue
	p.queue, p.spare = p.spare[:0], nil
	p.leader = nil
	n := 0
	for _, q := range batch {
		if w := p.waiting[q.token]; w != nil {
			w.sent = true
			batch[n] = q
			n++
		}
	}
	p.inflight += n
	p.mu.Unlock()
	for _, q := range batch[:n] {
		if err := p.nc.PublishMsg(q.msg); err != nil {
			p.fail(q.token, err)
		}
	}
	clear(batch)
	p.mu.Lock()
	if p.spare == nil {
		p.spare = batch[:0]
	}
	p.mu.Unlock()
}

// takeLocked removes the request of token from the waiting set and returns
// it, nil when it was answered or gave up already.
func (p *natsPublisher) takeLocked(token uint64) *pubWait {
	w := p.waiting[token]
	if w == nil {
		return nil
	}
	delete(p.waiting, token)
	if w.sent {
		p.inflight--
		p.wakeLeaderLocked()
	}
	return w
}

// fail answers the request of token with err, unless it was answered or
// gave up.
func (p *natsPublisher) fail(token uint64, err error) {
	p.mu.Lock()
	w := p.takeLocked(token)
	p.mu.Unlock()
	if w != nil {
		w.err = err
		w.done <- struct{}{}
	}
}

// forget removes w from the waiting set; false when an answer took it
// first (and sends, or has sent, on w.done).
func (p *natsPublisher) forget(w *pubWait) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waiting[w.token] != w {
		return false
	}
	p.takeLocked(w.token)
	return true
}

// subscribeLocked subscribes to the reply subjects at the first publish,
// and watches the connection: a request waiting when it is lost gets an
// error at once, as jetstream's futures do, rather than at its timeout.
func (p *natsPublisher) subscribeLocked() error {
	if p.sub != nil {
		return nil
	}
	sub, err := p.nc.Subscribe(p.prefix+"*", p.answer)
	if err != nil {
		return err
	}
	// The answers of many requests in flight must not be dropped as a
	// slow consumer's.
	_ = sub.SetPendingLimits(-1, -1)
	p.sub = sub
	p.status = p.nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	go p.watch(p.status)
	return nil
}

// watch fails every waiting request when the connection is lost, until it
// is closed.
func (p *natsPublisher) watch(status chan nats.Status) {
	for s := range status {
		p.mu.Lock()
		lost := make([]*pubWait, 0, len(p.waiting))
		for tok := range p.waiting {
			lost = append(lost, p.takeLocked(tok))
		}
		p.mu.Unlock()
		for _, w := range lost {
			w.err = errPubDisconnected
			w.done <- struct{}{}
		}
		if s == nats.CLOSED {
			return
		}
	}
}

// answer takes a PubAck (or a no-responders status) to its request.
func (p *natsPublisher) answer(m *nats.Msg) {
	tok, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, p.prefix), 10, 64)
	if err != nil {
		return
	}
	p.mu.Lock()
	w := p.takeLocked(tok)
	p.mu.Unlock()
	if w == nil {
		return // it gave up, or was failed by a disconnect
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		w.err = jetstream.ErrNoStreamResponse
	} else {
		w.ack, w.err = parsePubAck(m.Data)
	}
	w.done <- struct{}{}
}

// parsePubAck reads JetStream's answer to a publish: {"stream", "seq",
// "duplicate"} or {"error"}. The common answer is read without
// encoding/json; anything else (an error, an escape) through it.
func parsePubAck(data []byte) (pubAck, error) {
	if ack, ok := parsePubAckFast(data); ok {
		return ack, nil
	}
	return parsePubAckJSON(data)
}

// parsePubAckJSON is parsePubAck by encoding/json, and its reference: the
// fast path must agree with it (FuzzParsePubAck).
func parsePubAckJSON(data []byte) (pubAck, error) {
	var r struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Seq       uint64              `json:"seq"`
		Duplicate bool                `json:"duplicate"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	if r.Error != nil {
		return pubAck{}, r.Error
	}
	if r.Stream == "" {
		return pubAck{}, jetstream.ErrInvalidJSAck
	}
	return pubAck{seq: r.Seq, duplicate: r.Duplicate}, nil
}

// parsePubAckFast reads a PubAck with a stream and no error; false hands it
// to parsePubAckJSON.
func parsePubAckFast(data []byte) (pubAck, bool) {
	if !jsondec.Valid(data) {
		return pubAck{}, false
	}
	i := jsondec.SkipSpace(data, 0)
	if data[i] != '{' {
		return pubAck{}, false
	}
	d := jsondec.New(data)
	var ack pubAck
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
			ack.seq = n
			return end, err == nil
		case "duplicate":
			if seen[2] {
				return 0, false
			}
			seen[2] = true
			switch data[v] {
			case 't':
				ack.duplicate = true
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
