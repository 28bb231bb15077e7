package ingest

// Fast batch publishing (nats-server 2.14+): the table source sends a
// claimed batch's effects as one JetStream fast batch. The server answers
// with a flow ack every N messages and one PubAck when the batch commits,
// instead of one PubAck per message. The client side of the protocol is the
// minimum the table source needs (why not orbit.go's FastPublisher: see
// docs/architecture.md, "Fast batches"):
//
//   - every message carries a reply subject
//     <inbox prefix>.<batch id>.<flow>.fail.<batch seq>.<op>.$FI; the
//     server parses the batch id, the flow, the gap mode, the sequence and
//     the operation (0 start, 1 append, 2 commit with this message, 3 commit
//     without a message) from it;
//   - gap mode "fail": once a message is lost or refused the server ends
//     the batch there and commits what came before, so the batch sequences
//     the server confirms (a flow ack's seq, the PubAck's count) are a
//     prefix of the batch, every one of them stored (or a duplicate the
//     stream already held);
//   - the first message is sent alone: the server answers it with the flow
//     it grants (or, when it cannot start the batch, with a plain PubAck
//     error), so a refused batch costs one message, not one error per
//     message;
//   - the rest are sent while at most two flows of messages are
//     unconfirmed (the server grants a smaller flow while other batches are
//     in flight on the stream; that is how it shares its ingest);
//   - whatever the batch did not confirm goes back to the caller, which
//     publishes it message by message: each message keeps its Nats-Msg-Id,
//     so a message the batch did store is stored once.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/effects-run/effects/pkg/effects"
)

const (
	// fastBatchFlow is the flow asked for: a flow ack at most every 500
	// messages (the server's own maximum; it grants less while other
	// batches are in flight on the stream).
	fastBatchFlow = 500
	// fastBatchWindow is how many flows may be unconfirmed before the
	// sender waits.
	fastBatchWindow = 2
	// fastBatchMin is the fewest effects a batch must have to be sent as a
	// fast batch: one message gains nothing.
	fastBatchMin = 2
)

// Operations of a fast batch message (the reply subject's <op>).
const (
	fastOpStart     = "0"
	fastOpAppend    = "1"
	fastOpCommit    = "2"
	fastOpCommitEOB = "3"
)

// Error codes of the server's fast batch refusals.
const (
	errCodeBatchPublishDisabled = 10205
	errCodeBatchUnknown         = 10208
)

// errFastBatchDisabled: the stream does not allow batch publishing.
var errFastBatchDisabled = errors.New("the stream does not allow batch publishing")

// fastBatcher sends fast batches on one connection. It is safe for
// concurrent use: each batch has an id of its own; one subscription
// receives every batch's acks.
type fastBatcher struct {
	nc     *nats.Conn
	prefix string // the inbox prefix, "_INBOX.<nuid>"
	idBase string // the nuid of prefix: batch ids are idBase-<n>
	next   atomic.Uint64

	mu      sync.Mutex
	sub     *nats.Subscription
	batches map[string]*fastBatchState
}

// fastBatchState is what the server said about one batch so far.
type fastBatchState struct {
	mu      sync.Mutex
	started bool   // the server answered the first message
	stored  uint64 // batch sequences 1..stored are stored
	flow    uint64 // the flow the server grants
	done    bool   // the server ended the batch (PubAck)
	// needClose: a message was refused outside the batch; the sender
	// commits what the server has.
	needClose bool
	err       error // why the batch ended early, if it did
	signal    chan struct{}
}

func newFastBatcher(nc *nats.Conn) *fastBatcher {
	prefix := nc.NewInbox()
	return &fastBatcher{
		nc:      nc,
		prefix:  prefix,
		idBase:  prefix[strings.LastIndexByte(prefix, '.')+1:],
		batches: make(map[string]*fastBatchState),
	}
}

// close ends the subscription.
func (f *fastBatcher) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sub != nil {
		_ = f.sub.Unsubscribe()
		f.sub = nil
	}
}

func (f *fastBatcher) register(id string) (*fastBatchState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sub == nil {
		sub, err := f.nc.Subscribe(f.prefix+".>", f.handle)
		if err != nil {
			return nil, err
		}
		f.sub = sub
	}
	st := &fastBatchState{flow: 1, signal: make(chan struct{}, 1)}
	f.batches[id] = st
	return st, nil
}

func (f *fastBatcher) unregister(id string) {
	f.mu.Lock()
	delete(f.batches, id)
	f.mu.Unlock()
}

// fastFlowMsg is a flow ack, a gap or an error report of a batch.
type fastFlowMsg struct {
	Type  string              `json:"type"`
	Seq   uint64              `json:"seq"`
	Msgs  uint64              `json:"msgs"`
	Last  uint64              `json:"last_seq"`
	Error *jetstream.APIError `json:"error"`
}

// fastPubAck is the PubAck that ends a batch: its count is the last batch
// sequence stored.
type fastPubAck struct {
	Error     *jetstream.APIError `json:"error"`
	Stream    string              `json:"stream"`
	Duplicate bool                `json:"duplicate"`
	Batch     string              `json:"batch"`
	Count     uint64              `json:"count"`
}

// handle receives the server's answers for every batch.
func (f *fastBatcher) handle(m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, f.prefix+".")
	if !ok {
		return
	}
	id, _, _ := strings.Cut(rest, ".")
	f.mu.Lock()
	st := f.batches[id]
	f.mu.Unlock()
	if st == nil {
		return // a batch that ended already
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.done {
		return
	}
	switch {
	case len(m.Data) == 0:
		// A status: 503 when nothing (no stream) takes the subject.
		st.finish(fmt.Errorf("no stream answered (status %s)", m.Header.Get("Status")))
	case bytes.Contains(m.Data, []byte(`"type":"`)):
		var fm fastFlowMsg
		if err := json.Unmarshal(m.Data, &fm); err != nil {
			st.finish(fmt.Errorf("unreadable flow message %q: %w", m.Data, err))
			return
		}
		switch fm.Type {
		case "ack":
			st.started = true
			st.stored = max(st.stored, fm.Seq)
			if fm.Msgs > 0 {
				st.flow = fm.Msgs
			}
		case "gap":
			// The server commits what came before and sends the PubAck.
			if st.err == nil {
				st.err = fmt.Errorf("gap: expected batch sequence %d, got %d", fm.Last, fm.Seq)
			}
		case "err":
			// Likewise: the PubAck follows.
			if st.err == nil {
				st.err = fmt.Errorf("batch message %d refused: %w", fm.Seq, apiErr(fm.Error))
			}
		}
	default:
		var ack fastPubAck
		if err := json.Unmarshal(m.Data, &ack); err != nil {
			st.finish(fmt.Errorf("unreadable PubAck %q: %w", m.Data, err))
			return
		}
		if ack.Error != nil {
			switch {
			case ack.Error.ErrorCode == errCodeBatchPublishDisabled:
				st.finish(errFastBatchDisabled)
			case !st.started || ack.Error.ErrorCode == errCodeBatchUnknown:
				// The batch did not start, or is gone.
				st.finish(apiErr(ack.Error))
			default:
				// A message refused before it reached the batch
				// (over the stream's max message size, a limit):
				// the batch goes on without it, to a gap at the
				// next message. The sender ends the batch; its
				// PubAck says what was stored.
				if st.err == nil {
					st.err = apiErr(ack.Error)
				}
				st.needClose = true
			}
			break
		}
		if ack.Batch != id {
			// Not a batch's PubAck (a server that took the message as
			// a plain publish): nothing more is confirmed.
			st.finish(fmt.Errorf("the server answered with a PubAck of no batch: %s", m.Data))
			break
		}
		// The commit: batch sequences 1..count are stored (a
		// duplicate, which the server skips, counts as stored).
		st.stored = max(st.stored, ack.Count)
		st.finish(nil)
	}
	select {
	case st.signal <- struct{}{}:
	default:
	}
}

func apiErr(e *jetstream.APIError) error {
	if e == nil {
		return errors.New("no reason given")
	}
	return e
}

// finish ends the batch; st.mu is held.
func (st *fastBatchState) finish(err error) {
	st.done = true
	st.started = true
	if st.err == nil {
		st.err = err
	}
	select {
	case st.signal <- struct{}{}:
	default:
	}
}

// publish sends msgs (all on subjects of one stream, each with its
// Nats-Msg-Id) as one fast batch and returns which of them the server
// confirmed stored, by the deadline. A message not confirmed may or may not
// be stored; err says why the batch ended short. A message larger than the
// server's max_payload is left out of the batch (not confirmed, err nil).
// Each msg's Reply is left empty.
func (f *fastBatcher) publish(msgs []*nats.Msg, deadline time.Time) (stored []bool, err error) {
	stored = make([]bool, len(msgs))
	id := f.idBase + "-" + strconv.FormatUint(f.next.Add(1), 10)
	st, err := f.register(id)
	if err != nil {
		return stored, err
	}
	defer f.unregister(id)
	replyPrefix := f.prefix + "." + id + "." + strconv.Itoa(fastBatchFlow) + ".fail."
	// seqIdx[s-1] is the index in msgs of batch sequence s.
	seqIdx := make([]int, 0, len(msgs))
	defer func() {
		st.mu.Lock()
		n := min(st.stored, uint64(len(seqIdx)))
		st.mu.Unlock()
		for _, i := range seqIdx[:n] {
			stored[i] = true
		}
	}()

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	ended := false // the commit, or an end without a message, was sent
	end := func() error {
		ended = true
		return f.nc.PublishRequest(msgs[seqIdx[0]].Subject, replyPrefix+strconv.Itoa(len(seqIdx)+1)+"."+fastOpCommitEOB+".$FI", nil)
	}
	// wait waits until more may be sent (cond) or the batch ended, or the
	// deadline. It returns false once nothing more is to be sent: the
	// server ended the batch or is ending it (an error, a gap), or ending
	// it is up to this side (a message refused outside the batch, which
	// it then sends).
	wait := func(cond func() bool) bool {
		for {
			st.mu.Lock()
			ok, done, stop, needClose := cond(), st.done, st.err != nil, st.needClose
			st.mu.Unlock()
			if needClose && !done && !ended {
				if err := end(); err != nil {
					st.mu.Lock()
					st.finish(err)
					st.mu.Unlock()
					return false
				}
			}
			if done || stop || needClose {
				return false
			}
			if ok {
				return true
			}
			select {
			case <-st.signal:
			case <-timer.C:
				st.expire()
				return false
			}
		}
	}
	send := func(i int, op string) (bool, error) {
		msgs[i].Reply = replyPrefix + strconv.Itoa(len(seqIdx)+1) + "." + op + ".$FI"
		err := f.nc.PublishMsg(msgs[i])
		msgs[i].Reply = ""
		if errors.Is(err, nats.ErrMaxPayload) {
			return false, nil // left out: the caller publishes it (and fails it)
		}
		if err != nil {
			return false, err
		}
		seqIdx = append(seqIdx, i)
		return true, nil
	}

	// The first message alone: the server answers with the flow it grants
	// or why it cannot take the batch.
	i := 0
	for ; i < len(msgs)-1; i++ {
		sent, err := send(i, fastOpStart)
		if err != nil {
			return stored, err
		}
		if sent {
			break
		}
	}
	if len(seqIdx) == 0 {
		return stored, nil // nothing sendable: all left to the caller
	}
	var sendErr error
	if wait(func() bool { return st.started }) {
		for i++; i < len(msgs); i++ {
			op := fastOpAppend
			if i == len(msgs)-1 {
				op = fastOpCommit
			}
			sent, err := send(i, op)
			if err != nil {
				sendErr = fmt.Errorf("batch message %d: %w", len(seqIdx)+1, err)
				break
			}
			if sent && op == fastOpCommit {
				ended = true
			}
			seq := uint64(len(seqIdx))
			if !wait(func() bool { return seq < st.stored+fastBatchWindow*st.flow }) {
				break
			}
		}
	}
	if !ended && !st.isDone() {
		// Commit what the server has: the batch stopped short, or its
		// last message was left out.
		if err := end(); err != nil {
			st.mu.Lock()
			st.finish(fmt.Errorf("ending the batch: %w", err))
			st.mu.Unlock()
		}
	}
	wait(func() bool { return false }) // ends the batch if the server needs it
	// The batch's end (or the deadline).
	for !st.isDone() {
		select {
		case <-st.signal:
		case <-timer.C:
			st.expire()
		}
	}
	st.mu.Lock()
	err = st.err
	st.mu.Unlock()
	if err == nil {
		err = sendErr
	}
	return stored, err
}

// errFastBatchDeadline: the batch was not confirmed by its deadline.
var errFastBatchDeadline = errors.New("no ack by the deadline (EFFECTS_PUBLISH_TIMEOUT)")

// expire ends the batch at its deadline.
func (st *fastBatchState) expire() {
	st.mu.Lock()
	st.finish(errFastBatchDeadline)
	st.mu.Unlock()
}

func (st *fastBatchState) isDone() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.done
}

// fastBatchRecheck is how often the table source reads again whether the
// effects stream allows fast batches (`completer migrate streams` may allow
// it while the source runs; a stream may be recreated).
const fastBatchRecheck = 30 * time.Second

// fastPath is the table source's use of fast batches: whether it may (the
// setting, the server, the stream) and the batcher.
type fastPath struct {
	b       *fastBatcher // nil: EFFECTS_TABLE_FAST_BATCH=false
	js      jetstream.JetStream
	logger  *slog.Logger
	allowed atomic.Bool
	checkAt atomic.Int64 // when to read the stream's config again (unix ns)
	state   atomic.Int32 // what was logged last: 0 nothing, 1 on, 2 off
	lastLog atomic.Int64 // of an ended-short batch, at most every 10s
}

func newFastPath(js jetstream.JetStream, logger *slog.Logger, enabled bool) *fastPath {
	p := &fastPath{js: js, logger: logger}
	if enabled {
		if nc := js.Conn(); nc != nil {
			p.b = newFastBatcher(nc)
		}
	}
	return p
}

func (p *fastPath) close() {
	if p.b != nil {
		p.b.close()
	}
}

// usable says whether a batch may be sent as a fast batch now.
func (p *fastPath) usable(ctx context.Context) bool {
	if p.b == nil {
		return false
	}
	now := time.Now().UnixNano()
	if at := p.checkAt.Load(); now >= at && p.checkAt.CompareAndSwap(at, now+int64(fastBatchRecheck)) {
		p.check(ctx)
	}
	return p.allowed.Load()
}

// check reads whether the server and the effects stream allow fast batches.
func (p *fastPath) check(ctx context.Context) {
	version := p.b.nc.ConnectedServerVersion()
	if !effects.ServerHasBatchPublish(version) {
		p.set(false, "nats-server "+version+" has no fast batch publishing (2.14 or later has)")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
	defer cancel()
	s, err := p.js.Stream(cctx, effects.EffectsStream)
	if err != nil {
		p.logger.Debug("table source: reading the effects stream's config failed; asked again later", "error", err)
		return // keeps what it knew
	}
	if s.CachedInfo().Config.AllowBatchPublish {
		p.set(true, "")
		return
	}
	p.set(false, "the "+effects.EffectsStream+" stream does not allow fast batch publishing (allow_batched): "+
		"run `completer migrate streams` to allow it")
}

// set records whether fast batches may be used and logs a change.
func (p *fastPath) set(on bool, why string) {
	p.allowed.Store(on)
	state := int32(2)
	if on {
		state = 1
	}
	if p.state.Swap(state) == state {
		return
	}
	if on {
		p.logger.Info("table source: publishing each batch as one JetStream fast batch")
	} else {
		p.logger.Warn("table source: publishing message by message, not as fast batches", "reason", why)
	}
}

// publishFast sends the effects among claimed as one fast batch, when it
// may, and returns the rows the server confirmed stored (their outcome set)
// and the rows left to publish message by message: the rejected ones, and
// every effect the batch did not confirm.
func (s *TableSource) publishFast(ctx context.Context, claimed []claimedRow, deadline time.Time) (done []pending, rest []claimedRow) {
	if len(claimed) < fastBatchMin || !s.fast.usable(ctx) {
		return nil, claimed
	}
	var rows []claimedRow
	var msgs []*nats.Msg
	var labels []string
	var spans []trace.Span
	for _, r := range claimed {
		msg, label, rejected, err := s.rowMsg(r)
		if err != nil || rejected {
			rest = append(rest, r)
			continue
		}
		spans = append(spans, startPublish("", msg, r.id, label))
		rows, msgs, labels = append(rows, r), append(msgs, msg), append(labels, label)
	}
	if len(msgs) < fastBatchMin {
		for _, sp := range spans {
			sp.End()
		}
		return nil, claimed
	}
	stored, err := s.fast.b.publish(msgs, deadline)
	done = make([]pending, 0, len(msgs))
	fallback := 0
	for i, r := range rows {
		spans[i].End()
		if stored[i] {
			done = append(done, pending{id: r.id, label: labels[i], outcome: outcomePublished})
			continue
		}
		rest = append(rest, r)
		fallback++
	}
	s.tm.fastRows.WithLabelValues("stored").Add(float64(len(done)))
	if fallback > 0 {
		s.tm.fastRows.WithLabelValues("fallback").Add(float64(fallback))
		if errors.Is(err, errFastBatchDisabled) {
			s.fast.set(false, "the "+effects.EffectsStream+" stream refused a fast batch (allow_batched is off): "+
				"run `completer migrate streams` to allow it")
		}
		now := time.Now().UnixNano()
		if last := s.fast.lastLog.Load(); now-last >= int64(10*time.Second) && s.fast.lastLog.CompareAndSwap(last, now) {
			s.logger.Warn("table source: a fast batch ended short; its other rows are published message by message (logged at most every 10s)",
				"stored", len(done), "fallback", fallback, "error", err)
		}
	}
	return done, rest
}
