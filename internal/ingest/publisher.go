package ingest

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/effects-run/effects/internal/jspub"
)

// errPublishTimeout is (wrapped) the error of a publish not acked in time.
var errPublishTimeout = errors.New("no ack")

// effectPublisher is how the webhook hands an effect message to JetStream:
// publish returns its PubAck (stored, or a duplicate with the original's
// sequence), or why there is none by timeout.
type effectPublisher interface {
	publish(msg *nats.Msg, timeout time.Duration) (jspub.Ack, error)
}

// natsPublisher is the effectPublisher on a NATS connection: jspub, whose
// one batch in flight at a time sends the effects of the requests that come
// while one is waiting for its PubAcks together (docs/architecture.md,
// "The webhook's publisher"), and a request waiting for its own PubAck.
type natsPublisher struct{ p *jspub.Publisher }

func newNATSPublisher(nc *nats.Conn) *natsPublisher {
	return &natsPublisher{p: jspub.New(nc, jspub.Options{})}
}

// pubWait is one request while it waits for its PubAck. Pooled: jspub
// holds it only until it tells it or forgets it.
type pubWait struct {
	ack  jspub.Ack
	err  error
	done chan struct{}
}

func (w *pubWait) Published(ack jspub.Ack, err error) {
	w.ack, w.err = ack, err
	w.done <- struct{}{}
}

var pubWaitPool = sync.Pool{New: func() any { return &pubWait{done: make(chan struct{}, 1)} }}

var timerPool = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

func (n *natsPublisher) publish(msg *nats.Msg, timeout time.Duration) (jspub.Ack, error) {
	w := pubWaitPool.Get().(*pubWait)
	w.ack, w.err = jspub.Ack{}, nil
	tok, err := n.p.Publish(msg, w)
	if err != nil {
		pubWaitPool.Put(w)
		return jspub.Ack{}, err
	}
	timer := timerPool.Get().(*time.Timer)
	timer.Reset(timeout)
	select {
	case <-w.done:
	case <-timer.C:
		if n.p.Forget(tok) {
			w.err = fmt.Errorf("%w within %s (EFFECTS_PUBLISH_TIMEOUT)", errPublishTimeout, timeout)
		} else {
			<-w.done // answered meanwhile: the answer stands
		}
	}
	timer.Stop()
	timerPool.Put(timer)
	ack, err := w.ack, w.err
	pubWaitPool.Put(w)
	return ack, err
}
