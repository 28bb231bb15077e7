package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/jspub"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// gatedJS publishes completions through a real JetStream, but the first
// one's PubAck is the test's: it is told when the test says, with the real
// PubAck or with an error. It is both the dispatcher's pubJS (the
// synchronous way, PublishMsgAsync) and, as gatedPub, its completion
// publisher (the settler's way).
type gatedJS struct {
	jetstream.JetStream
	real  completionPublisher
	calls atomic.Int32
	first chan *heldFuture
	// fail makes every publish (after the first) fail at once.
	fail atomic.Bool
	held atomic.Pointer[heldFuture]
}

func newGatedJS(js jetstream.JetStream) *gatedJS {
	return &gatedJS{JetStream: js, real: newCompletionPublisher(js), first: make(chan *heldFuture, 1)}
}

// heldFuture is the first completion: send its PubAck on ok or an error on
// errc.
type heldFuture struct {
	msg  *nats.Msg
	ok   chan *jetstream.PubAck
	errc chan error
	// told ends the wait (Abandon).
	told chan error
}

func (f *heldFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *heldFuture) Err() <-chan error            { return f.errc }
func (f *heldFuture) Msg() *nats.Msg               { return f.msg }

// hold makes the first publish the test's.
func (g *gatedJS) hold(msg *nats.Msg) (*heldFuture, bool) {
	if g.calls.Add(1) != 1 {
		return nil, false
	}
	f := &heldFuture{msg: msg, ok: make(chan *jetstream.PubAck, 1), errc: make(chan error, 1), told: make(chan error, 1)}
	g.held.Store(f)
	g.first <- f
	return f, true
}

func (g *gatedJS) PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if f, ok := g.hold(msg); ok {
		return f, nil
	}
	if g.fail.Load() {
		return nil, errors.New("refused by the test")
	}
	return g.JetStream.PublishMsgAsync(msg, opts...)
}

// gatedPub is the gatedJS as the dispatcher's completion publisher.
type gatedPub struct{ g *gatedJS }

func (p gatedPub) Publish(msg *nats.Msg, w jspub.Waiter) (uint64, error) {
	g := p.g
	if f, ok := g.hold(msg); ok {
		go func() {
			select {
			case a := <-f.ok:
				w.Published(jspub.Ack{Seq: a.Sequence, Duplicate: a.Duplicate}, nil)
			case err := <-f.errc:
				w.Published(jspub.Ack{}, err)
			case err := <-f.told:
				w.Published(jspub.Ack{}, err)
			}
		}()
		return 0, nil
	}
	if g.fail.Load() {
		return 0, errors.New("refused by the test")
	}
	return g.real.Publish(msg, w)
}

func (p gatedPub) Expire(before time.Time, err error) int { return p.g.real.Expire(before, err) }
func (p gatedPub) Close()                                 { p.g.real.Close() }

func (p gatedPub) Abandon(err error) int {
	g := p.g
	n := g.real.Abandon(err)
	if f := g.held.Load(); f != nil {
		f.told <- err
		n++
	}
	return n
}

type settleRig struct {
	js    jetstream.JetStream
	gated *gatedJS
	cons  jetstream.Consumer
}

func startSettleRig(t *testing.T) *settleRig { return startSettleRigN(t, 8, 1) }

// startSettleRigN runs a dispatcher of concurrency workers and publishes n
// effects.
func startSettleRigN(t *testing.T, concurrency, n int) *settleRig {
	t.Helper()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	g := newGatedJS(js)
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	cfg := testConfig()
	cfg.Concurrency = concurrency
	d, err := New(cfg, reg, js, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	d.PublishThrough(g)
	d.pub = gatedPub{g}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = d.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	for d.Ready(ctx) != nil {
		time.Sleep(5 * time.Millisecond)
	}
	cons, err := js.Consumer(ctx, effects.EffectsStream, ConsumerName("echo"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		msg := nats.NewMsg(effects.Subject("echo"))
		msg.Data = fmt.Appendf(nil, `{"id":"00000000-0000-4000-8000-%012d","kind":"echo","payload":{"n":1},"created_at":"2026-03-14T09:26:53Z","session_variables":null}`, i)
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("ev-settle-%d", i))
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	return &settleRig{js: js, gated: g, cons: cons}
}

func (r *settleRig) info(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	info, err := r.cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func (r *settleRig) waitFor(t *testing.T, what string, cond func(*jetstream.ConsumerInfo) bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond(r.info(t)) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, r.info(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEffectNotAckedBeforeItsCompletionsPubAck: the completion is
// published asynchronously, and the effect stays unacked until JetStream
// acknowledged the completion, however long that takes.
func TestEffectNotAckedBeforeItsCompletionsPubAck(t *testing.T) {
	t.Parallel()
	r := startSettleRig(t)
	var f *heldFuture
	select {
	case f = <-r.gated.first:
	case <-time.After(15 * time.Second):
		t.Fatal("no completion published")
	}
	time.Sleep(300 * time.Millisecond)
	if info := r.info(t); info.NumAckPending != 1 || info.AckFloor.Stream != 0 {
		t.Fatalf("the effect was settled before its completion's PubAck: %+v", info)
	}
	// Now store the completion for real and hand its PubAck over.
	ack, err := r.js.PublishMsg(context.Background(), f.msg)
	if err != nil {
		t.Fatal(err)
	}
	f.ok <- ack
	r.waitFor(t, "the ack", func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumAckPending == 0 })
	if info := r.info(t); info.NumRedelivered != 0 {
		t.Fatalf("redelivered: %+v", info)
	}
}

// TestFailedPubAckPublishesAgain: a completion whose PubAck reports an
// error is published again, and the effect acked once that is stored.
func TestFailedPubAckPublishesAgain(t *testing.T) {
	t.Parallel()
	r := startSettleRig(t)
	f := <-r.gated.first
	f.errc <- errors.New("nats: timeout (from the test)")
	r.waitFor(t, "the ack", func(i *jetstream.ConsumerInfo) bool { return i.AckFloor.Stream == 1 && i.NumAckPending == 0 })
	if n := r.gated.calls.Load(); n < 2 {
		t.Fatalf("%d publishes, want the completion published again", n)
	}
	cs, err := r.js.Stream(context.Background(), effects.CompletedStream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := cs.Info(context.Background()); err != nil || info.State.Msgs != 1 {
		t.Fatalf("completions stored: %+v %v", info, err)
	}
}

// TestFailedPubAckWithoutRecoveryNaks: when the completion cannot be
// stored at all, the effect is not acked: it is nak'ed and delivered again.
func TestFailedPubAckWithoutRecoveryNaks(t *testing.T) {
	t.Parallel()
	r := startSettleRig(t)
	r.gated.fail.Store(true)
	f := <-r.gated.first
	f.errc <- errors.New("nats: timeout (from the test)")
	// The synchronous retries give up after publishTimeout, then nak with
	// a delay: the effect comes back as a second delivery.
	deadline := time.Now().Add(publishTimeout + 15*time.Second)
	for {
		info := r.info(t)
		if info.AckFloor.Stream != 0 {
			t.Fatalf("acked without a stored completion: %+v", info)
		}
		if info.NumRedelivered > 0 || info.Delivered.Consumer >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not delivered again: %+v", info)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Once JetStream takes completions again, the effect is done.
	r.gated.fail.Store(false)
	r.waitFor(t, "the ack", func(i *jetstream.ConsumerInfo) bool { return i.NumAckPending == 0 && i.NumPending == 0 })
}

// TestWorkerGoesOnWhileAPubAckIsOutstanding: a worker does not wait for its
// completion's PubAck: with one worker and the first PubAck held, the next
// effects are handled and acked meanwhile, and the first is acked once its
// PubAck arrives.
func TestWorkerGoesOnWhileAPubAckIsOutstanding(t *testing.T) {
	t.Parallel()
	r := startSettleRigN(t, 1, 3)
	f := <-r.gated.first
	// The other two: handled by the same (only) worker, completions stored.
	cs, err := r.js.Stream(context.Background(), effects.CompletedStream)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, err := cs.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker waited for the held PubAck: %d completions stored, want 2", info.State.Msgs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if info := r.info(t); info.NumAckPending != 1 && info.NumAckPending != 3 {
		// The first is never acked yet; the settler acks the other two in
		// order behind it, so they may still be pending too.
		t.Fatalf("ack pending %d: %+v", info.NumAckPending, info)
	}
	ack, err := r.js.PublishMsg(context.Background(), f.msg)
	if err != nil {
		t.Fatal(err)
	}
	f.ok <- ack
	r.waitFor(t, "every ack", func(i *jetstream.ConsumerInfo) bool { return i.NumAckPending == 0 && i.AckFloor.Stream == 3 })
}
