package dispatcher

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// settler acks (or terms) effects whose completion was published
// asynchronously, once JetStream acknowledged the completion. A worker that
// published a completion hands the rest of the delivery to it and takes the
// next message instead of waiting for the PubAck round trip; under load the
// settler finds most PubAcks already arrived and settles them in a row.
//
// The order is unchanged: an effect is acked only after its completion's
// PubAck. A PubAck that reports an error, or none within publishTimeout,
// sends the completion again the synchronous way (publish, with its
// retries) in a goroutine of its own, and the delivery is settled as before:
// ack after the completion is stored, or a delayed nak.
type settler struct {
	// ctx ends when a stop gives up waiting: what is still unsettled is
	// left to JetStream's redelivery after the ack wait.
	ctx     context.Context
	cancel  context.CancelFunc
	mu      sync.RWMutex // held for reading while handing over, so stop cannot close ch meanwhile
	closed  bool
	ch      chan pendingSettle
	pending sync.WaitGroup // handed over and not settled yet
	done    chan struct{}
}

// pendingSettle is a delivery whose completion is on its way.
type pendingSettle struct {
	x     *executor
	dl    *delivery
	o     outcome
	fut   jetstream.PubAckFuture
	since time.Time
}

// settlerQueue bounds the deliveries waiting for their PubAck in the
// settler's queue; beyond it workers wait to hand over (the connection's
// async-publish window bounds the publishes themselves).
const settlerQueue = 4096

// errNoPubAck: JetStream did not acknowledge a completion in time.
var errNoPubAck = errors.New("no PubAck within the publish timeout")

func newSettler() *settler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &settler{ctx: ctx, cancel: cancel, ch: make(chan pendingSettle, settlerQueue), done: make(chan struct{})}
	go s.run()
	return s
}

// add hands p over; false when the settler was stopped (the caller then
// waits for the PubAck itself).
func (s *settler) add(p pendingSettle) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return false
	}
	s.pending.Add(1)
	s.ch <- p // the settler keeps draining, so a full queue only waits
	return true
}

func (s *settler) run() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for p := range s.ch {
		s.settle(p, timer)
	}
}

func (s *settler) settle(p pendingSettle, timer *time.Timer) {
	// Most PubAcks have arrived by the time their turn comes.
	select {
	case <-p.fut.Ok():
		p.x.settleAfterPublish(p.dl, p.o)
		s.pending.Done()
		return
	case err := <-p.fut.Err():
		s.retry(p, err)
		return
	default:
	}
	timer.Reset(max(time.Until(p.since.Add(publishTimeout)), 0))
	defer timer.Stop()
	select {
	case <-p.fut.Ok():
		p.x.settleAfterPublish(p.dl, p.o)
		s.pending.Done()
	case err := <-p.fut.Err():
		s.retry(p, err)
	case <-timer.C:
		s.retry(p, errNoPubAck)
	case <-s.ctx.Done():
		p.dl.keep.stop() // left to the redelivery after the ack wait
		s.pending.Done()
	}
}

// retry publishes the completion again, waiting and retrying as a worker
// would, off the settler's goroutine.
func (s *settler) retry(p pendingSettle, err error) {
	p.x.logger.Debug("completion publish not acknowledged; publishing again", "effect_id", p.dl.effect.ID, "kind", p.x.kind, "error", err)
	go func() {
		defer s.pending.Done()
		p.x.publishAndSettle(s.ctx, p.dl, p.o)
	}()
}

// stop waits until ctx ends for the deliveries handed over to be settled,
// then stops the settler. Later hand-overs are refused. It reports whether
// all were settled.
func (s *settler) stop(ctx context.Context) bool {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.ch)
	}
	s.mu.Unlock()
	defer func() { <-s.done; s.cancel() }()
	settled := make(chan struct{})
	go func() { s.pending.Wait(); close(settled) }()
	select {
	case <-settled:
		return true
	case <-ctx.Done():
		s.cancel()
		<-settled // the waits and retries end with ctx
		return false
	}
}
