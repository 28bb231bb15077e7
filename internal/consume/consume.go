// Package consume is the one loop that reads a durable JetStream pull
// consumer: the dispatcher's kinds, the completer, effects.ConsumeCompletions
// and the Watermill subscriber all read through a [Reader].
//
// A Reader owns its consumer for as long as it runs:
//   - [Open] binds to the consumer when it exists and its configuration
//     matches (nothing is written to the server), updates it when the
//     configuration really differs (and logs what differs), and creates it
//     when it does not exist: after the ack floor recorded for it in
//     [PositionBucket] when there is one (the consumer existed and was lost
//     while no process read it), else where the configuration says (a new
//     consumer's messages have never been handled);
//   - it records the consumer's ack floor in [PositionBucket] now and then
//     (when it moved, at most every Config.RecordEvery, never per message)
//     and once more at [Reader.Release];
//   - it notices a consumer that disappears (deleted by hand, or lost with
//     the server's store) and creates it again from where it was: from the
//     stream sequence after the last ack floor it saw, never from the start
//     of the stream. Messages this process acked or terminated above that
//     floor are remembered, and when they come again they are settled again
//     without being handed out, so only the messages in flight at the loss
//     (and those other processes acked in the moment before it) run again;
//   - it works around nats-server 2.15.3 leaving a consumer re-created during
//     its deletion without a directory (see docs/architecture.md);
//   - it is ready ([Reader.Ready]) only while it consumes, and logs and
//     counts ([Metrics]) every loss, with where it resumed;
//   - [Reader.Pause] stops the pulling and gives back what was pulled
//     ahead, without letting the consumer go: it is still watched (a loss
//     is recovered, from where it was) until [Reader.Resume] pulls again.
package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/retry"
)

// ErrStopped is what [Reader.Next] returns once the reader was stopped and
// holds no message any more.
var ErrStopped = errors.New("consume: stopped")

// Config says what a [Reader] reads and how.
type Config struct {
	// Stream is the stream the consumer reads. Required.
	Stream string
	// Consumer is the durable consumer's configuration; Durable is
	// required. DeliverPolicy (with OptStartSeq or OptStartTime) is where a
	// consumer that does not exist yet starts; an existing one keeps its
	// position, and one created again after a loss resumes where it was.
	// Fields left at their zero value are not compared with an existing
	// consumer's.
	Consumer jetstream.ConsumerConfig
	// Buffer is how many messages are pulled ahead into the client's buffer
	// (keep it near the number of workers: JetStream's ack timer runs while
	// a message waits there). 0 sends one pull request per [Reader.Next],
	// so that every delivered message is in a caller's hands.
	Buffer int
	// Heartbeat is the pull requests' idle heartbeat: a pull request the
	// server lost is noticed after two. Default 1s.
	Heartbeat time.Duration
	// CheckEvery is how often the consumer's info is read: its ack floor
	// (where a lost consumer resumes) and whether it still exists.
	// Default 1s.
	CheckEvery time.Duration
	// RecordEvery is how often at most the ack floor, when it moved, is
	// written to [PositionBucket]. Default 2s.
	RecordEvery time.Duration
	// Logger gets what happens to the consumer. Default: none.
	Logger *slog.Logger
	// Metrics counts losses and re-creations; nil counts nothing.
	Metrics *Metrics
}

const (
	// defaultHeartbeat is short because nats.go (v1.55.0) decides to send
	// the next pull request only when Next is called, and skips it while
	// the previous one is still being written; if the messages of that
	// previous request are all taken before the write finishes, Next waits
	// for messages nobody asked for until two heartbeats are missed (30s
	// with the default heartbeat). A pull request sent while a clustered
	// consumer has no leader is lost the same way. Idle heartbeats cost one
	// small message per heartbeat per waiting pull request.
	defaultHeartbeat = time.Second
	// defaultCheckEvery bounds how stale the ack floor a lost consumer
	// resumes after can be (what other processes acked since is run
	// again), and how long a loss nobody's pull request was told about
	// goes unnoticed. One consumer info request per second per reader.
	defaultCheckEvery = time.Second
	// fetchOneWait is how long one pull request waits when Buffer is 0.
	fetchOneWait = 5 * time.Second
	// settlePause is how long a reader waits after finding its consumer
	// gone before creating it again, and again after creating it before
	// checking that the server stored it: nats-server answers waiting pull
	// requests "consumer deleted" before it removes the old consumer's
	// directory, and a consumer created in between loses its directory to
	// that removal (docs/architecture.md, "nats-server 2.15.3 and a
	// consumer re-created during its deletion").
	settlePause = 250 * time.Millisecond
	// apiTimeout bounds each request to the JetStream API.
	apiTimeout = 5 * time.Second
	// maxRemembered bounds the stream sequences a reader remembers as
	// settled above the ack floor (a message retried with a long delay
	// holds the floor back while later ones are acked). Past it, settled
	// messages are not remembered: after a loss they would run again.
	maxRemembered = 1 << 17
)

// Reader reads one durable consumer. Create it with [Open]; it is safe for
// concurrent use by many workers, and must be stopped with [Reader.Stop] or
// [Reader.Release].
type Reader struct {
	cfg Config
	js  jetstream.JetStream
	log *slog.Logger
	m   *series
	// pos is the consumer's key in PositionBucket.
	pos *positions
	// finalOnce records the position once as the reader is released.
	finalOnce sync.Once

	// cur is the consumer being read; nil while it is created again.
	cur atomic.Pointer[source]
	// srcMu orders the changes of cur that start or end pulling: a pause,
	// a resume, a loss and the install of its replacement, and Stop.
	srcMu sync.Mutex
	// paused: Pause stopped the pulling until Resume (written under srcMu);
	// Next waits meanwhile. resumed is closed by Resume.
	paused  atomic.Bool
	resumed chan struct{}
	// ended receives the source whose pull requests ended unexpectedly (the
	// consumer deleted): the watcher checks at once.
	ended chan *source

	stopCtx  context.Context
	stopNow  context.CancelFunc
	stopOnce sync.Once
	stopped  chan struct{}
	watching sync.WaitGroup

	mu sync.Mutex
	// installed is closed when a source is installed after a loss.
	installed chan struct{}
	// why is the reason the reader is not ready, while cur is nil.
	why string
	// streamCreated tells a stream created again (all its messages new)
	// from the one the floor was read on.
	streamCreated time.Time
	// floor is the highest ack floor (stream sequence) seen.
	floor uint64
	// settled are the stream sequences above floor this process acked
	// (false) or terminated (true); highest is the highest of them, so that
	// a message first delivered (above it) is not looked up.
	settled map[uint64]bool
	highest atomic.Uint64
	// lastSettled is the message this process settled last: its ack
	// subject is the barrier of recordFinal.
	lastSettled *msg
}

// source is one consumer handle and, unless Buffer is 0 or the reader is
// paused, its iterator.
type source struct {
	cons jetstream.Consumer
	it   jetstream.MessagesContext
	// gone is closed once the reader gave this source up.
	gone chan struct{}
}

// Open binds to, updates or creates the consumer (once: the caller retries)
// and starts reading it.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Reader, error) {
	if cfg.Stream == "" || cfg.Consumer.Durable == "" {
		return nil, errors.New("consume: Stream and Consumer.Durable are required")
	}
	if cfg.Buffer < 0 {
		return nil, fmt.Errorf("consume: Buffer %d: want 0 or more", cfg.Buffer)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = defaultHeartbeat
	}
	if cfg.CheckEvery <= 0 {
		cfg.CheckEvery = defaultCheckEvery
	}
	if cfg.RecordEvery <= 0 {
		cfg.RecordEvery = defaultRecordEvery
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Reader{
		cfg: cfg, js: js,
		log:       cfg.Logger.With("stream", cfg.Stream, "consumer", cfg.Consumer.Durable),
		m:         cfg.Metrics.forConsumer(cfg.Stream, cfg.Consumer.Durable),
		ended:     make(chan *source, 1),
		stopped:   make(chan struct{}),
		installed: make(chan struct{}),
		settled:   map[uint64]bool{},
	}
	r.pos = &positions{js: js, key: PositionKey(cfg.Stream, cfg.Consumer.Durable), every: cfg.RecordEvery, log: r.log, m: r.m}
	r.stopCtx, r.stopNow = context.WithCancel(context.Background())
	r.resumed = make(chan struct{})
	close(r.resumed)
	src, err := r.open(ctx)
	if err != nil {
		r.stopNow()
		return nil, err
	}
	r.noteFloor(src.cons.CachedInfo().AckFloor.Stream)
	r.cur.Store(src)
	close(r.installed)
	r.watching.Add(1)
	go r.watch()
	return r, nil
}

func (r *Reader) open(ctx context.Context) (*source, error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	s, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: stream %s: %w", r.cfg.Consumer.Durable, r.cfg.Stream, err)
	}
	si := s.CachedInfo()
	r.streamCreated = si.Created
	// A reader that creates the position bucket gives it the replicas of
	// the stream it reads: the bucket survives what the streams survive.
	r.pos.replicas = si.Config.Replicas
	cons, err := r.bind(ctx, si)
	if err != nil {
		return nil, err
	}
	return r.newSource(cons, true)
}

// bind returns the consumer: created if it does not exist (see creation),
// updated if its configuration differs from the wanted one.
func (r *Reader) bind(ctx context.Context, si *jetstream.StreamInfo) (jetstream.Consumer, error) {
	want := r.cfg.Consumer
	for range 3 { // a create that loses a race binds to the winner's
		cons, err := r.js.Consumer(ctx, r.cfg.Stream, want.Durable)
		if err == nil {
			have := cons.CachedInfo().Config
			diff := differences(want, have)
			if len(diff) == 0 {
				return cons, nil // bound: nothing written
			}
			upd := want
			upd.DeliverPolicy, upd.OptStartSeq, upd.OptStartTime = have.DeliverPolicy, have.OptStartSeq, have.OptStartTime
			r.log.Info("the consumer's configuration differs from this service's; updating it", "differences", diff)
			updated, err := r.js.UpdateConsumer(ctx, r.cfg.Stream, upd)
			if unstored(err) {
				return r.replaceUnstored(ctx, cons.CachedInfo())
			}
			if err != nil {
				return nil, fmt.Errorf("update consumer %s on %s: %w", want.Durable, r.cfg.Stream, err)
			}
			return updated, nil
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("consumer %s on %s: %w", want.Durable, r.cfg.Stream, err)
		}
		create, created, err := r.creation(ctx, si)
		if err != nil {
			return nil, err
		}
		cons, err = r.js.CreateConsumer(ctx, r.cfg.Stream, create)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			continue // another process created it meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("create consumer %s on %s: %w", want.Durable, r.cfg.Stream, err)
		}
		created()
		return cons, nil
	}
	return nil, fmt.Errorf("consumer %s on %s: created and deleted again while binding", want.Durable, r.cfg.Stream)
}

// creation returns the configuration to create the missing consumer with,
// and what to log (and count) once it is created. A position recorded for
// it on this stream means that the consumer existed and was lost while no
// process read it (deleted, or lost with the server's store): it is created
// again after the recorded ack floor, never from the start (DeliverAll
// would run every effect the stream holds again, a week by default). No
// position means a consumer that never existed (its messages never ran): it
// starts where the configuration says. So does one whose position is of an
// earlier stream of the same name, and one whose position cannot be told
// because the bucket itself is gone: then the log says so.
func (r *Reader) creation(ctx context.Context, si *jetstream.StreamInfo) (jetstream.ConsumerConfig, func(), error) {
	want := r.cfg.Consumer
	deliver := want.DeliverPolicy.String()
	pos, state, err := r.pos.load(ctx)
	if err != nil {
		// Whether it existed is unknown: creating it from its start could
		// run the stream again. Open fails, and the caller retries.
		return want, nil, fmt.Errorf("consumer %s on %s is missing, and its recorded position cannot be read: %w", want.Durable, r.cfg.Stream, err)
	}
	switch {
	case state == recorded && pos.StreamCreated.Equal(si.Created):
		start := resumeAt(pos.AckFloor, si.State)
		want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = jetstream.DeliverByStartSequencePolicy, start, nil
		return want, func() {
			attrs := []any{"recorded_ack_floor", pos.AckFloor, "recorded_at", pos.Written, "resumed_at_stream_sequence", start}
			switch {
			case start > pos.AckFloor+1:
				attrs = append(attrs, "skipped", "the stream's limits (max age) removed the messages after the recorded floor before its first one")
			case start < pos.AckFloor+1:
				attrs = append(attrs, "note", "the recorded floor is beyond the stream's last message (restored from an older copy?): resumed after its last one")
			}
			r.log.Warn("the consumer was lost while no process read it (deleted, or lost with the server's store); created it again after its recorded ack floor, not from the start of the stream", attrs...)
			r.m.recreated(start)
		}, nil
	case state == recorded:
		return want, func() {
			r.log.Info("created the consumer; its recorded position is of an earlier stream of that name, so it starts where its configuration says", "deliver", deliver)
		}, nil
	case (state == bucketMissing || state == unreadable) && si.State.Msgs > 0:
		return want, func() {
			r.log.Warn("created the consumer where its configuration says, without knowing whether it existed: its position in the bucket "+PositionBucket+
				" is missing with the bucket (deleted?) or unreadable; had the consumer been lost, its messages run again", "deliver", deliver, "stream_messages", si.State.Msgs)
		}, nil
	default:
		return want, func() { r.log.Info("created the consumer", "deliver", deliver) }, nil
	}
}

// resumeAt is the stream sequence a lost consumer whose ack floor was floor
// is created again at: the one after the floor, but not before the stream's
// first message (its limits removed the older ones) nor beyond the one
// after its last (a floor ahead of the stream: the messages the stream
// gets next must not be skipped; nats-server does not clamp it).
func resumeAt(floor uint64, st jetstream.StreamState) uint64 {
	return max(min(floor+1, st.LastSeq+1), st.FirstSeq)
}

// replaceUnstored replaces a consumer the server keeps without its
// directory (it cannot be updated, and would be gone after a restart) by
// one created after its ack floor. Deleting it first is safe: the deletion
// has removed the old directory when the server answers it.
func (r *Reader) replaceUnstored(ctx context.Context, info *jetstream.ConsumerInfo) (jetstream.Consumer, error) {
	want := r.cfg.Consumer
	want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = jetstream.DeliverByStartSequencePolicy, info.AckFloor.Stream+1, nil
	r.log.Warn("nats-server keeps the consumer without its directory; deleting it and creating it again after its ack floor",
		"resumed_at_stream_sequence", want.OptStartSeq)
	if err := r.js.DeleteConsumer(ctx, r.cfg.Stream, want.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("delete consumer %s on %s: %w", want.Durable, r.cfg.Stream, err)
	}
	cons, err := r.js.CreateConsumer(ctx, r.cfg.Stream, want)
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", want.Durable, r.cfg.Stream, err)
	}
	r.m.recreated(want.OptStartSeq)
	return cons, nil
}

// differences lists the fields set in want that have has otherwise. The
// position (DeliverPolicy, OptStartSeq, OptStartTime) is the consumer's
// own; filters are compared as sets; metadata by want's keys.
func differences(want, have jetstream.ConsumerConfig) []string {
	var out []string
	if w, h := filters(want), filters(have); len(w) > 0 && !slices.Equal(w, h) {
		out = append(out, fmt.Sprintf("filter: %v, want %v", h, w))
	}
	for k, v := range want.Metadata {
		if have.Metadata[k] != v {
			out = append(out, fmt.Sprintf("metadata %s: %q, want %q", k, have.Metadata[k], v))
		}
	}
	wv, hv := reflect.ValueOf(want), reflect.ValueOf(have)
	for i := range wv.NumField() {
		name := wv.Type().Field(i).Name
		switch name {
		case "Name", "Durable", "DeliverPolicy", "OptStartSeq", "OptStartTime", "FilterSubject", "FilterSubjects", "Metadata":
			continue
		}
		w, h := wv.Field(i), hv.Field(i)
		if !w.IsZero() && !reflect.DeepEqual(w.Interface(), h.Interface()) {
			out = append(out, fmt.Sprintf("%s: %v, want %v", name, h.Interface(), w.Interface()))
		}
	}
	return out
}

func filters(c jetstream.ConsumerConfig) []string {
	f := slices.Clone(c.FilterSubjects)
	if c.FilterSubject != "" {
		f = append(f, c.FilterSubject)
	}
	slices.Sort(f)
	return slices.Compact(f)
}

// newSource starts reading cons; without pull (paused), it only holds it.
func (r *Reader) newSource(cons jetstream.Consumer, pull bool) (*source, error) {
	src := &source{cons: cons, gone: make(chan struct{})}
	if r.cfg.Buffer > 0 && pull {
		it, err := cons.Messages(jetstream.PullMaxMessages(r.cfg.Buffer), jetstream.PullHeartbeat(r.cfg.Heartbeat))
		if err != nil {
			return nil, fmt.Errorf("consume %s: %w", r.cfg.Consumer.Durable, err)
		}
		src.it = it
	}
	return src, nil
}

// Next returns the next message, waiting for one (and, while the consumer is
// being created again, for it), until ctx ends. After [Reader.Stop] it
// returns the messages the reader still holds, then ErrStopped.
func (r *Reader) Next(ctx context.Context) (jetstream.Msg, error) {
	for {
		src, err := r.source(ctx)
		if err != nil {
			return nil, err
		}
		jm, err := r.fetch(ctx, src)
		if err == nil {
			m := r.wrap(jm)
			if r.settledAgain(m) {
				continue
			}
			return m, nil
		}
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case r.isStopped():
			return nil, ErrStopped
		case errors.Is(err, jetstream.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionClosed):
			return nil, err
		case r.paused.Load() && errors.Is(err, jetstream.ErrMsgIteratorClosed):
			// Pause stopped this iterator: source waits for the resume.
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
			errors.Is(err, jetstream.ErrMsgIteratorClosed):
			// The pull requests ended: the consumer is gone, or being
			// replaced. The watcher looks at once; wait for its verdict.
			select {
			case r.ended <- src:
			default: // another worker told it already
			}
			select {
			case <-src.gone:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-r.stopCtx.Done():
			}
		case errors.Is(err, jetstream.ErrNoHeartbeat), errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
			// Idle, a lost pull request, or NATS away: the iterator pulls
			// again by itself, and the watcher finds a consumer gone.
		default:
			level := slog.LevelWarn
			if errors.Is(err, nats.ErrNoResponders) {
				level = slog.LevelDebug // no consumer to answer: the watcher finds it gone
			}
			r.log.Log(ctx, level, "jetstream fetch", "error", err)
			if src.it == nil {
				// No hot loop of pull requests while NATS refuses them
				// (a stop cancels the fetch's wait, not this one's).
				_ = retry.Sleep(ctx, 100*time.Millisecond)
			}
		}
	}
}

// source is the consumer to read, waiting while it is created again or
// the reader is paused.
func (r *Reader) source(ctx context.Context) (*source, error) {
	for {
		// cur before paused: Pause sets paused before it parks cur.
		src := r.cur.Load()
		if r.paused.Load() {
			if err := r.awaitResume(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if src != nil {
			return src, nil
		}
		if r.isStopped() {
			return nil, ErrStopped
		}
		r.mu.Lock()
		wait := r.installed
		r.mu.Unlock()
		if r.cur.Load() != nil {
			continue
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-r.stopCtx.Done():
		}
	}
}

func (r *Reader) fetch(ctx context.Context, src *source) (jetstream.Msg, error) {
	if src.it != nil {
		if r.isStopped() {
			return src.it.Next() // what the drained iterator still holds
		}
		return src.it.Next(jetstream.NextContext(ctx))
	}
	if r.isStopped() {
		return nil, ErrStopped
	}
	fctx, cancel := context.WithTimeout(ctx, fetchOneWait)
	defer cancel()
	stop := context.AfterFunc(r.stopCtx, cancel)
	defer stop()
	return src.cons.Next(jetstream.FetchContext(fctx))
}

func (r *Reader) isStopped() bool { return r.stopCtx.Err() != nil }

// awaitResume waits while the reader is paused; ErrStopped once it is
// stopped (a paused reader holds nothing).
func (r *Reader) awaitResume(ctx context.Context) error {
	r.srcMu.Lock()
	paused, resumed := r.paused.Load(), r.resumed
	r.srcMu.Unlock()
	switch {
	case !paused:
		return nil
	case r.isStopped():
		return ErrStopped
	}
	select {
	case <-resumed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-r.stopCtx.Done():
		return ErrStopped
	}
}

// Pause stops pulling until [Reader.Resume] and gives back every message
// the reader pulled ahead and still holds, through giveBack (the
// dispatcher's goes through its one settle path; nil naks it without
// delay); it returns how many. Held in the client's buffer, unseen and not
// kept alive, they would be delivered again after the ack wait, each time
// counted as a delivery: a long pause would use up their attempts.
// Meanwhile Next waits; the consumer stays watched (a loss is recovered
// from where it was, without pulling) and the reader stays ready. Messages
// already handed out are the caller's. Pause does nothing on a reader
// paused or stopped.
func (r *Reader) Pause(giveBack func(jetstream.Msg)) int {
	r.srcMu.Lock()
	if r.paused.Load() || r.isStopped() {
		r.srcMu.Unlock()
		return 0
	}
	r.resumed = make(chan struct{})
	r.paused.Store(true)
	src := r.cur.Load()
	if src == nil || src.it == nil {
		r.srcMu.Unlock()
		return 0 // being created again (install sees the pause), or nothing pulled ahead
	}
	// The consumer, parked: watched, not pulled from. Whoever waits on the
	// old source's end moves on (and then waits for the resume).
	r.cur.Store(&source{cons: src.cons, gone: make(chan struct{})})
	close(src.gone)
	r.srcMu.Unlock()
	return r.giveBack(src.it, giveBack)
}

// Resume pulls again after [Reader.Pause]; it does nothing unless paused.
// An error (the connection closed) leaves the reader pulling one message
// per Next instead of ahead.
func (r *Reader) Resume() error {
	r.srcMu.Lock()
	defer r.srcMu.Unlock()
	if !r.paused.Load() {
		return nil
	}
	var err error
	if src := r.cur.Load(); src != nil && src.it == nil && r.cfg.Buffer > 0 && !r.isStopped() {
		var pulling *source
		if pulling, err = r.newSource(src.cons, true); err == nil {
			r.cur.Store(pulling)
			close(src.gone)
		}
	}
	r.paused.Store(false)
	close(r.resumed)
	return err
}

// giveBack ends it and hands each message it still holds to giveBack (nil:
// a plain nak). While disconnected it cannot drain: what it holds is
// dropped, and JetStream delivers it again after the ack wait.
//
// The messages are collected first and given back only once the iterator
// is closed: its drain is complete when Next says so, and only then has the
// server forgotten its pull requests. A message given back while one was
// still open would be delivered again into the same iterator at once, to be
// given back again, each round counted as a delivery (an attempt).
func (r *Reader) giveBack(it jetstream.MessagesContext, giveBack func(jetstream.Msg)) int {
	if !r.endPulling(it) {
		return 0
	}
	if giveBack == nil {
		giveBack = func(jm jetstream.Msg) { _ = jm.Nak() }
	}
	var held []jetstream.Msg
	for {
		jm, err := it.Next()
		if err != nil {
			break // ErrMsgIteratorClosed once drained
		}
		held = append(held, jm)
	}
	for _, jm := range held {
		giveBack(jm)
	}
	return len(held)
}

// endPulling stops it's pull requests; it keeps what it holds for Next
// (true) unless disconnected, when it cannot drain and drops it (false).
func (r *Reader) endPulling(it jetstream.MessagesContext) bool {
	if nc := r.js.Conn(); nc != nil && !nc.IsConnected() {
		it.Stop()
		return false
	}
	it.Drain()
	return true
}

// Stop stops pulling: no more pull requests, and the watcher ends. Next
// still returns the messages the reader holds (pulled ahead), then
// ErrStopped; [Reader.Release] gives them back. While disconnected a drain
// cannot flush: then what it holds is dropped, and JetStream redelivers it
// after the ack wait. Stop is idempotent.
func (r *Reader) Stop() {
	r.stopOnce.Do(func() {
		r.stopNow()
		r.watching.Wait()
		r.srcMu.Lock()
		if src := r.cur.Load(); src != nil && src.it != nil {
			r.endPulling(src.it)
		}
		r.srcMu.Unlock()
		close(r.stopped)
	})
}

// Stopped is closed once [Reader.Stop] has stopped pulling.
func (r *Reader) Stopped() <-chan struct{} { return r.stopped }

// Release stops the reader and gives back every message it still holds,
// so that they are delivered again at once, here or to another process;
// it returns how many. Then it records the consumer's ack floor in
// [PositionBucket] once more: call it once the caller settled everything. giveBack settles each (the dispatcher's goes
// through its one settle path); nil naks it without delay. Messages
// already handed out are the caller's to settle.
func (r *Reader) Release(giveBack func(jetstream.Msg)) int {
	r.Stop()
	defer r.recordFinal()
	r.srcMu.Lock()
	src := r.cur.Load()
	r.srcMu.Unlock()
	if src == nil || src.it == nil {
		return 0
	}
	return r.giveBack(src.it, giveBack) // drained by Stop already
}

// recordPosition records the position info was read at (see positions).
func (r *Reader) recordPosition(ctx context.Context, info *jetstream.ConsumerInfo, force bool) {
	r.mu.Lock()
	created := r.streamCreated
	r.mu.Unlock()
	r.pos.record(ctx, position{AckFloor: info.AckFloor.Stream, StreamCreated: created, ConsumerCreated: info.Created}, force)
}

// recordFinal records the position once more as the reader is released,
// after the caller settled what it held: a process stopped for a deploy
// leaves its last ack floor, not the one of up to RecordEvery before.
func (r *Reader) recordFinal() {
	r.finalOnce.Do(func() {
		src := r.cur.Load()
		nc := r.js.Conn()
		if src == nil || nc == nil || !nc.IsConnected() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), positionTimeout)
		defer cancel()
		r.mu.Lock()
		last := r.lastSettled
		r.mu.Unlock()
		if last != nil && last.Reply() != "" {
			// Acks are plain publishes, applied by the server one after
			// the other on a queue of the consumer's, apart from the info
			// request: read at once, the floor can miss the last acks.
			// An in-progress request on a message this process settled
			// (a no-op for a message no longer pending) is answered once
			// the queue reached it, after the acks sent before.
			_, _ = nc.RequestWithContext(ctx, last.Reply(), []byte("+WPI"))
		}
		if info, err := src.cons.Info(ctx); err == nil {
			r.recordPosition(ctx, info, true)
		}
	})
}

// Ready reports whether the reader consumes: nil unless it is stopped or
// its consumer is being created again.
func (r *Reader) Ready() error {
	if r.isStopped() {
		return fmt.Errorf("consumer %s: stopped", r.cfg.Consumer.Durable)
	}
	if r.cur.Load() != nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Errorf("consumer %s on %s is being created again: %s", r.cfg.Consumer.Durable, r.cfg.Stream, r.why)
}

// watch reads the consumer's info every CheckEvery (its ack floor, and
// whether it still exists), and recovers a consumer found gone.
func (r *Reader) watch() {
	defer r.watching.Done()
	t := time.NewTicker(r.cfg.CheckEvery)
	defer t.Stop()
	for {
		var ended *source
		select {
		case <-r.stopCtx.Done():
			return
		case <-t.C:
		case ended = <-r.ended:
		}
		src := r.cur.Load()
		if src == nil || (ended != nil && ended != src) {
			continue
		}
		if ended != nil || r.poll(src) {
			r.recover(src)
		}
	}
}

// poll reads the consumer's info: it notes the ack floor, and reports
// whether the consumer (or its stream) no longer exists. Any other answer,
// or none (NATS away), is "not gone".
func (r *Reader) poll(src *source) bool {
	ctx, cancel := context.WithTimeout(r.stopCtx, apiTimeout)
	defer cancel()
	info, err := src.cons.Info(ctx)
	if err == nil {
		r.noteFloor(info.AckFloor.Stream)
		r.recordPosition(ctx, info, false)
		return false
	}
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
}

// recover replaces a source whose consumer is gone (or whose pull requests
// ended): it binds to the consumer if another process created it again
// meanwhile, or creates it from where it was, retrying until it works or
// the reader stops.
func (r *Reader) recover(old *source) {
	r.srcMu.Lock()
	if r.cur.Load() != old {
		// Parked by a pause or replaced by a resume meanwhile: the next
		// check looks at the one in its place.
		r.srcMu.Unlock()
		return
	}
	r.mu.Lock()
	r.why = "it was found gone"
	r.installed = make(chan struct{})
	floor, remembered := r.floor, len(r.settled)
	r.mu.Unlock()
	r.cur.Store(nil)
	r.srcMu.Unlock()
	if old.it != nil {
		old.it.Stop()
	}
	close(old.gone)
	r.log.Warn("the consumer is gone (deleted, or lost with the server's store); creating it again from where it was",
		"ack_floor", floor, "settled_above_floor", remembered)
	if retry.Sleep(r.stopCtx, settlePause) != nil {
		return
	}
	retry.Until(r.stopCtx, retry.Policy{Min: settlePause, Max: 5 * time.Second}, r.reopen,
		func(err error, n int, wait time.Duration) {
			r.mu.Lock()
			r.why = err.Error()
			r.mu.Unlock()
			r.log.Warn("creating the consumer again; retrying", "attempt", n, "error", err, "retry_in", wait.String())
		})
}

// reopen is one attempt of recover.
func (r *Reader) reopen(ctx context.Context) error {
	cons, start, err := r.findOrCreate(ctx)
	if err != nil {
		return r.dropIfUnstored(err)
	}
	// Prove the server stored the consumer: its metadata, written once
	// more, must find its directory. Whoever created it, it was created
	// while the old one was being deleted.
	if err := retry.Sleep(ctx, settlePause); err != nil {
		return err
	}
	uctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if _, err := r.js.UpdateConsumer(uctx, r.cfg.Stream, cons.CachedInfo().Config); err != nil {
		return r.dropIfUnstored(err)
	}
	if err := r.install(cons); err != nil {
		return err
	}
	switch {
	case start < 0:
		r.log.Info("another process created the consumer again; reading it")
		return nil
	case start == 0:
		r.log.Warn("the stream was created again: the consumer starts anew on it", "deliver", r.cfg.Consumer.DeliverPolicy.String())
	default:
		r.log.Warn("created the consumer again; messages settled here since are settled again without running, those in flight at the loss run again",
			"resumed_at_stream_sequence", start)
	}
	r.m.recreated(uint64(max(start, 0)))
	return nil
}

// findOrCreate returns the consumer another process created again, with
// start -1, or creates it: from the stream sequence after the floor (start),
// or, on a stream that was created again, where the configuration says
// (start 0).
func (r *Reader) findOrCreate(ctx context.Context) (cons jetstream.Consumer, start int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	name := r.cfg.Consumer.Durable
	if cons, err := r.js.Consumer(ctx, r.cfg.Stream, name); err == nil {
		return cons, -1, nil
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, 0, err
	}
	s, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return nil, 0, err
	}
	want := r.cfg.Consumer
	r.mu.Lock()
	if created := s.CachedInfo().Created; !created.Equal(r.streamCreated) {
		// The stream was created again: none of its messages was handled,
		// and the old sequences mean nothing in it.
		r.streamCreated, r.floor, r.settled = created, 0, map[uint64]bool{}
		r.highest.Store(0)
	} else {
		want.DeliverPolicy, want.OptStartSeq, want.OptStartTime = jetstream.DeliverByStartSequencePolicy, resumeAt(r.floor, s.CachedInfo().State), nil
		start = int64(want.OptStartSeq)
	}
	r.mu.Unlock()
	cons, err = r.js.CreateConsumer(ctx, r.cfg.Stream, want)
	if errors.Is(err, jetstream.ErrConsumerExists) {
		// Another process created it first, from its own floor: read that
		// one, so that all converge on one consumer.
		cons, err = r.js.Consumer(ctx, r.cfg.Stream, name)
		return cons, -1, err
	}
	return cons, start, err
}

// dropIfUnstored deletes a consumer the server answers about with
// err_code 10012 "…/meta.inf.tmp: no such file or directory": it lives in
// the server's memory without its directory, cannot be updated, and would
// be gone after the server's next restart. Created afresh it is stored.
func (r *Reader) dropIfUnstored(err error) error {
	if !unstored(err) {
		return err
	}
	ctx, cancel := context.WithTimeout(r.stopCtx, apiTimeout)
	defer cancel()
	derr := r.js.DeleteConsumer(ctx, r.cfg.Stream, r.cfg.Consumer.Durable)
	r.log.Warn("nats-server left the consumer created again without its directory; deleted it to create it once more",
		"error", err, "delete_error", derr)
	return fmt.Errorf("the server did not store the consumer created again (deleted it to try once more): %w", err)
}

// unstored reports a JetStream error about a consumer whose directory is
// missing on the server.
func unstored(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeConsumerCreate &&
		strings.Contains(apiErr.Description, "no such file or directory")
}

// install starts reading cons in place of the source given up (only
// holding it, while paused).
func (r *Reader) install(cons jetstream.Consumer) error {
	r.srcMu.Lock()
	defer r.srcMu.Unlock()
	src, err := r.newSource(cons, !r.paused.Load())
	if err != nil {
		return err
	}
	r.noteFloor(cons.CachedInfo().AckFloor.Stream)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.isStopped() {
		if src.it != nil {
			src.it.Stop()
		}
		return ErrStopped
	}
	r.cur.Store(src)
	close(r.installed)
	return nil
}

// noteFloor records an ack floor read from the server and forgets the
// settled sequences at or below it.
func (r *Reader) noteFloor(floor uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if floor <= r.floor {
		return
	}
	r.floor = floor
	for seq := range r.settled {
		if seq <= floor {
			delete(r.settled, seq)
		}
	}
}

// remember records a message this process settled for good.
func (r *Reader) remember(m *msg, termed bool) {
	seq := m.seq
	if seq == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastSettled = m
	if seq > r.floor && len(r.settled) < maxRemembered {
		r.settled[seq] = termed
		if seq > r.highest.Load() {
			r.highest.Store(seq)
		}
	}
}

// settledAgain settles, without handing it out, a message this process
// already acked or terminated (its ack was lost, or the consumer was created
// again below it).
func (r *Reader) settledAgain(m *msg) bool {
	if m.seq == 0 || m.seq > r.highest.Load() {
		return false
	}
	r.mu.Lock()
	termed, ok := r.settled[m.seq]
	r.mu.Unlock()
	if !ok {
		return false
	}
	if termed {
		_ = m.Msg.Term()
	} else {
		_ = m.Msg.Ack()
	}
	r.m.settledAgain()
	return true
}
