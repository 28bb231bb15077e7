package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/controlkv"
	"github.com/effects-run/effects/internal/retry"
)

// The operator controls as a dispatcher sees them (`effects pause`,
// `effects resume`, `effects cancel`; docs/architecture.md, "Controls").
//
// The dispatcher does not read PostgreSQL: it watches the key-value bucket
// EFFECTS_CONTROL (internal/controlkv) through a consumer of its own, keeps
// the paused kinds and the cancelled effects in memory, and acknowledges
// each change only after applying it, which is what lets a control wait
// until every dispatcher has it. Before an attempt starts, a worker asks
// its kind (one lock, two map lookups): a cancelled effect is settled
// without running (acked, no completion); while the kind is paused, or the
// dispatcher cannot vouch for its copy, the attempt waits (the message kept
// alive) and the kind's workers pull nothing more. A pause also stops the
// kind's consumer pulling ahead and gives back what it had buffered
// (applyPause). Every cancel and give-back is settled through the one
// settle path (settle.go), decided by decide.
//
// The copy is trusted only while all of these hold: it was read to the end
// of the bucket on the current consumer and the bucket's synced key was
// seen (a bucket being filled again is not "nothing paused"); the
// connection did not drop since; and the server confirmed the consumer
// still exists within controlkv.StaleAfter (a consumer info every
// controlkv.PollInterval). The server removes a watcher only after it
// had no pull request for controlkv.WatcherInactiveThreshold, far longer,
// so a dispatcher whose consumer went stopped trusting its copy first.

// errCancelled is the cause of an attempt's context cancelled because an
// operator cancelled its effect.
var errCancelled = errors.New("effect cancelled by an operator")

// controls is the dispatcher's copy of the operator controls.
type controls struct {
	d      *Dispatcher
	logger *slog.Logger
	kinds  map[string]*executor // the registered kinds; fixed after New

	start time.Time // the zero of mono
	// live: the copy was read to the end with the synced key, on the
	// current consumer.
	live atomic.Bool
	// proven is when (mono) the last consumer info that succeeded was
	// asked; 0: not since the copy was (re)loaded or the connection dropped.
	proven  atomic.Int64
	proveMu sync.Mutex // orders proofs and their invalidation
	epoch   uint64     // bumped by every invalidation (under proveMu)

	// reason says why the copy is not trusted (for /readyz and logs).
	reason atomic.Pointer[string]
	wake   broadcast

	paused *prometheus.GaugeVec
	up     prometheus.GaugeFunc
	// done is closed when the watcher has stopped and removed its consumer.
	done chan struct{}
}

// kindControl is one kind's part of the copy, and the attempts of the
// kind running now (so that a cancel reaches them).
type kindControl struct {
	paused    atomic.Bool // written under mu
	mu        sync.Mutex
	cancelled map[string]time.Time // effect id → when cancelled
	running   map[string]*runEntry // effect id → its running attempts
}

// runEntry is a running attempt of an effect, for its cancel.
type runEntry struct {
	cancel    context.CancelCauseFunc
	next      *runEntry
	cancelled atomic.Bool
}

// gate is what begin decided.
type gate int

const (
	gateRun       gate = iota // the attempt may start; it is registered
	gateCancelled             // the effect is cancelled: settle it unrun
	gateWait                  // paused, or the copy cannot be trusted now
)

func newControls(d *Dispatcher, registerer prometheus.Registerer) (*controls, error) {
	c := &controls{d: d, logger: d.logger, kinds: map[string]*executor{}, start: time.Now(), done: make(chan struct{})}
	c.setReason("the operator controls (bucket " + controlkv.Bucket + ") have not been read yet")
	c.paused = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "effects_kind_paused",
		Help: "1 while the kind is paused (effects pause), as this dispatcher sees it; 0 otherwise.",
	}, []string{"kind"})
	c.up = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "effects_control_up",
		Help: "1 while this dispatcher has a current copy of the operator controls (bucket EFFECTS_CONTROL); 0 while it cannot read them, when it starts no effect.",
	}, func() float64 {
		if c.trusted() {
			return 1
		}
		return 0
	})
	for _, col := range []prometheus.Collector{c.paused, c.up} {
		if err := registerer.Register(col); err != nil {
			return nil, err
		}
	}
	for _, x := range d.execs {
		c.kinds[x.kind] = x
		x.ctl = &kindControl{cancelled: map[string]time.Time{}, running: map[string]*runEntry{}}
		c.paused.WithLabelValues(x.kind).Set(0)
	}
	return c, nil
}

func (c *controls) mono() int64 { return int64(time.Since(c.start)) }

// trusted reports whether attempts may rely on the copy now.
func (c *controls) trusted() bool {
	if !c.live.Load() {
		return false
	}
	p := c.proven.Load()
	return p != 0 && c.mono()-p < int64(controlkv.StaleAfter)
}

func (c *controls) setReason(s string) { c.reason.Store(&s) }

// ready is the dispatcher's readiness as far as the controls go.
func (c *controls) ready() error {
	if c.trusted() {
		return nil
	}
	r := *c.reason.Load()
	if c.live.Load() {
		r = "no confirmation from NATS that this dispatcher's watcher of bucket " + controlkv.Bucket + " still exists"
	}
	return fmt.Errorf("operator controls unknown (%s): no effect is started meanwhile", r)
}

// invalidate withdraws the proof (a disconnect, a consumer found gone).
func (c *controls) invalidate() {
	c.proveMu.Lock()
	c.epoch++
	c.proven.Store(0)
	c.proveMu.Unlock()
}

// prove records a consumer info asked at sent (mono) and answered, unless
// the proof was withdrawn since it was asked.
func (c *controls) prove(epoch uint64, sent int64) {
	c.proveMu.Lock()
	defer c.proveMu.Unlock()
	if c.epoch != epoch || sent <= c.proven.Load() {
		return
	}
	wasTrusted := c.trusted()
	c.proven.Store(sent)
	if !wasTrusted && c.trusted() {
		c.wake.all()
	}
}

func (c *controls) currentEpoch() uint64 {
	c.proveMu.Lock()
	defer c.proveMu.Unlock()
	return c.epoch
}

// begin decides whether dl's attempt may start and, if so, registers it
// (with cancel, its context's) so that a cancel reaches it. The hot path:
// one lock and, with nothing cancelled in the kind, one map insert.
func (k *kindControl) begin(c *controls, dl *delivery, cancel context.CancelCauseFunc) gate {
	id := dl.effect.ID
	k.mu.Lock()
	defer k.mu.Unlock()
	// The trust is read under the lock too, so that it is as fresh as the
	// registration.
	trusted := c.trusted()
	if len(k.cancelled) > 0 {
		if _, ok := k.cancelled[strings.ToLower(id)]; ok {
			return gateCancelled // known cancelled: cancels are never taken back
		}
	}
	if !trusted || k.paused.Load() {
		return gateWait
	}
	dl.run.cancel = cancel
	dl.run.next = k.running[id]
	k.running[id] = &dl.run
	return gateRun
}

// end unregisters dl's attempt.
func (k *kindControl) end(dl *delivery) {
	id := dl.effect.ID
	k.mu.Lock()
	defer k.mu.Unlock()
	p := k.running[id]
	if p == &dl.run {
		if dl.run.next == nil {
			delete(k.running, id)
		} else {
			k.running[id] = dl.run.next
		}
		return
	}
	for ; p != nil; p = p.next {
		if p.next == &dl.run {
			p.next = dl.run.next
			return
		}
	}
}

// runnable reports whether the kind's attempts may start now.
func (k *kindControl) runnable(c *controls) bool { return c.trusted() && !k.paused.Load() }

// mayRun reports whether the kind's attempts may start now: always without
// the controls.
func (x *executor) mayRun() bool { return x.ctl == nil || x.ctl.runnable(x.d.ctl) }

// awaitRunnable waits, before a worker pulls, until the kind may run or
// ctx ends: a paused kind pulls nothing.
func (x *executor) awaitRunnable(ctx context.Context) {
	if x.ctl == nil {
		return
	}
	c := x.d.ctl
	for !x.ctl.runnable(c) && ctx.Err() == nil {
		c.wait(ctx)
	}
}

// wait blocks until the copy changes (a resume, trusted again), a short
// while passes (the proof is time-bound), or ctx ends.
func (c *controls) wait(ctx context.Context) {
	t := time.NewTimer(controlkv.PollInterval)
	defer t.Stop()
	select {
	case <-c.wake.ch():
	case <-t.C:
	case <-ctx.Done():
	}
}

// admit is the check before an attempt starts. It returns the attempt's
// context (cancelled by a cancel of the effect) and true, or false when the
// delivery was settled instead: cancelled (acked unrun), or given back
// because ctx (fetching) ended while the kind was paused.
func (x *executor) admit(ctx context.Context, dl *delivery) (context.Context, bool) {
	if x.ctl == nil {
		return x.d.workCtx, true
	}
	c := x.d.ctl
	actx, cancel := context.WithCancelCause(x.d.workCtx)
	for {
		switch x.ctl.begin(c, dl, cancel) {
		case gateRun:
			return actx, true
		case gateCancelled:
			cancel(errCancelled)
			x.finish(dl, result{cancelled: true}, false) // acked unrun
			return nil, false
		}
		if ctx.Err() != nil {
			cancel(errShutdown)
			x.finish(dl, result{err: errShutdown}, true) // back to the stream, unrun
			return nil, false
		}
		c.wait(ctx)
	}
}

// endAttempt unregisters dl's attempt once its outcome was applied; an
// async effect cancelled while its handler ran is let go if it was held.
func (x *executor) endAttempt(dl *delivery) {
	if x.ctl == nil {
		return
	}
	x.ctl.end(dl)
	dl.run.cancel(nil) // releases the context (the handler has returned)
	if dl.run.cancelled.Load() && x.async {
		x.cancelHeld(dl.effect.ID)
	}
}

// attemptCancelled reports whether a cancel reached dl's running attempt.
func (dl *delivery) attemptCancelled() bool { return dl.run.cancelled.Load() }

// cancelHeld lets go of a held async effect that was cancelled: claimed
// back from held like a completion or the deadline would, and settled
// through decide (acked, no completion; a completion published later
// changes nothing: the completer keeps the row cancelled).
func (x *executor) cancelHeld(id string) {
	x.mu.Lock()
	dl := x.held[id]
	x.mu.Unlock()
	if dl == nil || !dl.claim(held) {
		return // not held, or completed, expired or released first
	}
	x.unhold(dl)
	in := x.info(dl, false)
	in.held = true
	x.settle(dl, decide(in, result{cancelled: true}))
}

// applyCancel records a cancel and cancels the running attempts of the
// effect; held async effects are let go.
func (c *controls) applyCancel(kind, id string, at time.Time) {
	x := c.kinds[kind]
	if x == nil {
		return // not a kind of this dispatcher
	}
	k := x.ctl
	k.mu.Lock()
	k.cancelled[id] = at
	n := 0
	for e := k.running[id]; e != nil; e = e.next {
		e.cancelled.Store(true)
		e.cancel(errCancelled)
		n++
	}
	k.mu.Unlock()
	if n > 0 {
		c.logger.Info("running effect cancelled by an operator; its handler's context is cancelled", "effect_id", id, "kind", kind)
	}
	if x.async {
		x.cancelHeld(id)
	}
}

func (c *controls) applyPause(kind string, paused bool, m controlkv.Mark) {
	x := c.kinds[kind]
	if x == nil {
		return
	}
	x.ctl.mu.Lock()
	was := x.ctl.paused.Swap(paused)
	x.ctl.mu.Unlock()
	if was == paused {
		return
	}
	if paused {
		c.paused.WithLabelValues(kind).Set(1)
		// Stop pulling and give back what the kind's consumer pulled ahead
		// (through the one settle path): held unseen in the client's buffer
		// and not kept alive, each would be delivered again after every ack
		// wait of the pause, each time counted as an attempt. Given back, a
		// message is delivered again once, after the resume.
		n := x.src.Pause(x.giveBack)
		c.logger.Info("kind paused: no new attempts until it is resumed", "kind", kind, "by", m.By, "at", m.At, "given_back", n)
		return
	}
	c.paused.WithLabelValues(kind).Set(0)
	if err := x.src.Resume(); err != nil {
		c.logger.Warn("kind resumed; its consumer pulls one message at a time", "kind", kind, "error", err)
	}
	c.logger.Info("kind resumed", "kind", kind)
	c.wake.all()
}

// snapshot is the copy being read on a new consumer, applied at once when
// read to the end (with the synced key).
type snapshot struct {
	paused    map[string]controlkv.Mark
	cancelled map[string]map[string]time.Time // kind → id → when
	synced    bool
	// seq is the stream sequence of the last message applied per paused
	// or synced key, so that a redelivered older message never undoes a
	// newer one.
	seq map[string]uint64
}

func newSnapshot() *snapshot {
	return &snapshot{paused: map[string]controlkv.Mark{}, cancelled: map[string]map[string]time.Time{}, seq: map[string]uint64{}}
}

// run watches the bucket until ctx ends, through one consumer after
// another (a new one whenever the last is gone), then removes its consumer.
func (c *controls) run(ctx context.Context) {
	defer close(c.done)
	nc := c.d.js.Conn()
	var status chan nats.Status
	if nc != nil {
		status = nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
		defer nc.RemoveStatusListener(status)
	}
	var listening sync.WaitGroup
	defer listening.Wait()
	listening.Go(func() {
		for {
			select {
			case <-status:
				c.invalidate()
				c.setReason("disconnected from NATS")
			case <-ctx.Done():
				return
			}
		}
	})
	host, _ := os.Hostname()
	desc := fmt.Sprintf("effects dispatcher on %s, pid %d", host, os.Getpid())
	lastLog := time.Time{}
	for ctx.Err() == nil {
		name := controlkv.WatcherPrefix + nuid.Next()
		cons, err := c.create(ctx, name, desc, &lastLog)
		if err != nil {
			return // stopped
		}
		c.watch(ctx, cons)
		c.remove(ctx, name)
	}
}

// remove deletes a consumer of this dispatcher's that it no longer reads
// (gone already, or at the stop), so that no control waits for it. At the
// stop, only within the stop's deadline and while connected: otherwise the
// server removes it after controlkv.WatcherInactiveThreshold.
func (c *controls) remove(ctx context.Context, name string) {
	deadline := time.Now().Add(2 * time.Second)
	if ctx.Err() != nil {
		if nc := c.d.js.Conn(); nc != nil && !nc.IsConnected() {
			return
		}
		if d := c.d.StopDeadline(); !d.IsZero() && d.Before(deadline) {
			deadline = d
		}
	}
	dctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	_ = c.d.js.DeleteConsumer(dctx, controlkv.Stream, name)
}

// create makes this dispatcher's consumer of the bucket, retrying (and
// saying why, at most every 10s) until it exists or ctx ends.
func (c *controls) create(ctx context.Context, name, desc string, lastLog *time.Time) (jetstream.Consumer, error) {
	var cons jetstream.Consumer
	_, ok := retry.Until(ctx, retry.Policy{Min: 100 * time.Millisecond, Max: controlkv.PollInterval},
		func(ctx context.Context) error {
			var err error
			cons, err = c.d.js.CreateConsumer(ctx, controlkv.Stream, jetstream.ConsumerConfig{
				Name:              name,
				Description:       desc,
				DeliverPolicy:     jetstream.DeliverLastPerSubjectPolicy,
				FilterSubject:     "$KV." + controlkv.Bucket + ".>",
				AckPolicy:         jetstream.AckExplicitPolicy,
				AckWait:           5 * time.Second,
				MaxDeliver:        -1,
				InactiveThreshold: controlkv.WatcherInactiveThreshold,
				MemoryStorage:     true,
				Replicas:          1,
			})
			return err
		},
		func(err error, n int, wait time.Duration) {
			reason := err.Error()
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				reason = "bucket " + controlkv.Bucket + " not found (the completer creates it again from PostgreSQL)"
			}
			c.setReason(reason)
			if time.Since(*lastLog) >= 10*time.Second {
				*lastLog = time.Now()
				c.logger.Warn("cannot read the operator controls; starting no effect until they can be read",
					"bucket", controlkv.Bucket, "reason", reason, "attempt", n)
			}
		})
	if !ok {
		return nil, ctx.Err()
	}
	return cons, nil
}

// watch reads cons until it is gone or ctx ends.
func (c *controls) watch(ctx context.Context, cons jetstream.Consumer) {
	c.live.Store(false)
	c.setReason("reading bucket " + controlkv.Bucket)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	it, err := cons.Messages(jetstream.PullMaxMessages(500), jetstream.PullExpiry(controlkv.WatcherPullExpiry), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return
	}
	defer it.Stop()
	// The proof: the consumer's info, every PollInterval.
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		defer it.Stop() // the consumer is gone: end the reads
		t := time.NewTicker(controlkv.PollInterval)
		defer t.Stop()
		lastOK := c.mono()
		for n := 1; ; n++ {
			epoch, sent := c.currentEpoch(), c.mono()
			ictx, cancel := context.WithTimeout(wctx, 2*time.Second)
			_, err := cons.Info(ictx)
			cancel()
			gone := errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
			switch {
			case err == nil:
				c.prove(epoch, sent)
				lastOK = sent
			case gone || c.mono()-lastOK > int64(3*controlkv.StaleAfter):
				// Gone, or unanswered for long (its only replica lost
				// with a node): a new consumer, read from the start.
				c.invalidate()
				c.live.Store(false)
				c.setReason("this dispatcher's watcher of bucket " + controlkv.Bucket + " is gone")
				if wctx.Err() == nil {
					c.logger.Warn("the operator controls' watcher is gone; reading the bucket again", "bucket", controlkv.Bucket, "error", err)
				}
				return
			}
			if n%60 == 0 {
				c.prune(c.d.maxAge)
			}
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	defer func() { stop(); <-polled }()

	snap := newSnapshot()
	caughtUp := false
	for {
		m, err := it.Next(jetstream.NextContext(wctx))
		if err != nil {
			if wctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				return
			}
			continue // missed heartbeats, a reconnect: the iterator recovers; the poll decides
		}
		meta, err := m.Metadata()
		if err != nil {
			_ = m.Term()
			continue
		}
		c.apply(snap, m, meta.Sequence.Stream)
		if meta.NumPending == 0 {
			caughtUp = true
		}
		if !c.live.Load() && caughtUp && snap.synced {
			c.goLive(snap)
		}
		_ = m.Ack() // after applying: the ack is the dispatcher's word (controlkv.Confirm)
	}
}

// apply applies one message of the bucket: to the snapshot while loading,
// to the copy once live.
func (c *controls) apply(snap *snapshot, m jetstream.Msg, seq uint64) {
	key := strings.TrimPrefix(m.Subject(), "$KV."+controlkv.Bucket+".")
	k := controlkv.ParseKey(key)
	if k.Type == controlkv.Paused || k.Type == controlkv.Synced {
		// JetStream delivers in order, but a message whose ack was lost
		// comes again later: it must not undo a newer one. (Cancels need
		// no such guard: one is never taken back.)
		if seq <= snap.seq[key] {
			return
		}
		snap.seq[key] = seq
	}
	op := m.Headers().Get("KV-Operation") // "DEL" or "PURGE" for a delete marker
	removed := op != ""
	var mk controlkv.Mark
	if !removed && k.Type != controlkv.Unknown {
		var err error
		if mk, err = controlkv.DecodeMark(m.Data()); err != nil {
			c.logger.Warn("unreadable operator control; ignored", "key", key, "error", err)
			return
		}
	}
	live := c.live.Load()
	switch k.Type {
	case controlkv.Synced:
		snap.synced = !removed
	case controlkv.Paused:
		if live {
			c.applyPause(k.Kind, !removed, mk)
		} else if removed {
			delete(snap.paused, k.Kind)
		} else {
			snap.paused[k.Kind] = mk
		}
	case controlkv.Cancelled:
		if removed {
			return // expired or purged by hand: a cancel is never taken back
		}
		if live {
			c.applyCancel(k.Kind, k.ID, mk.At)
		} else {
			if snap.cancelled[k.Kind] == nil {
				snap.cancelled[k.Kind] = map[string]time.Time{}
			}
			snap.cancelled[k.Kind][k.ID] = mk.At
		}
	}
}

// goLive replaces the copy with a snapshot read to the end.
func (c *controls) goLive(snap *snapshot) {
	nPaused, nCancelled := 0, 0
	for kind, x := range c.kinds {
		m, paused := snap.paused[kind]
		if paused {
			nPaused++
		}
		cancelled := snap.cancelled[kind]
		if cancelled == nil {
			cancelled = map[string]time.Time{}
		}
		nCancelled += len(cancelled)
		k := x.ctl
		k.mu.Lock()
		for id, at := range k.cancelled {
			if _, ok := cancelled[id]; !ok {
				cancelled[id] = at // known before: cancels are never taken back
			}
		}
		k.cancelled = cancelled
		k.mu.Unlock()
		c.applyPause(kind, paused, m)
		for id, at := range cancelled {
			c.applyCancel(kind, id, at) // reaches attempts running since before
		}
	}
	c.live.Store(true)
	c.setReason("")
	c.logger.Info("operator controls read", "bucket", controlkv.Bucket, "paused_kinds", nPaused, "cancelled_effects", nCancelled)
	c.wake.all()
}

// prune forgets cancels older than the effects stream's max age (and an
// hour): JetStream can no longer deliver their effects.
func (c *controls) prune(maxAge time.Duration) {
	if maxAge <= 0 {
		return
	}
	cutoff := time.Now().Add(-maxAge - time.Hour)
	for _, x := range c.kinds {
		k := x.ctl
		k.mu.Lock()
		for id, at := range k.cancelled {
			if at.Before(cutoff) {
				delete(k.cancelled, id)
			}
		}
		k.mu.Unlock()
	}
}

// broadcast wakes every waiter at once.
type broadcast struct {
	mu sync.Mutex
	c  chan struct{}
}

func (b *broadcast) ch() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c == nil {
		b.c = make(chan struct{})
	}
	return b.c
}

func (b *broadcast) all() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c != nil {
		close(b.c)
		b.c = nil
	}
}
