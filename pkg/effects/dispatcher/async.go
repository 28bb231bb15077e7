package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/effects-run/effects/pkg/effects"
)

// An async effect's message is held, not acked, from the moment its
// handler started the work until its completion is published (by Done in
// this process, or by anyone: the executor listens to the kind's
// completions) or its completion deadline passes. Held, it is kept alive
// with InProgress; past the deadline it is nak'ed and gets a new attempt;
// if this process dies, the keep-alive stops and JetStream redelivers it
// after the ack wait, to any dispatcher. So an async effect reaches a final
// state whether or not the process that started it lives.

type heldState int

const (
	running  heldState = iota // the handler has not returned yet
	held                      // waiting for the completion
	released                  // completed, expired or given back
)

// errNoCompletion is the error of an async attempt whose completion did not
// arrive in time.
var errNoCompletion = errors.New("no completion within the completion deadline")

// done is the Done an async handler gets: it publishes through the
// dispatcher's client and then lets the held message go.
func (x *executor) done(dl *delivery) effects.Done {
	return heldDone{Done: x.d.client.For(dl.effect.Ref()), x: x, dl: dl}
}

type heldDone struct {
	effects.Done
	x  *executor
	dl *delivery
}

func (h heldDone) Complete(ctx context.Context, v any) error {
	err := h.Done.Complete(ctx, v)
	if err == nil {
		h.x.completed(h.dl)
	}
	return err
}

func (h heldDone) Fail(ctx context.Context, cause error) error {
	err := h.Done.Fail(ctx, cause)
	if err == nil {
		h.x.completed(h.dl)
	}
	return err
}

// hold keeps dl until its completion or its deadline (apply calls it).
func (x *executor) hold(dl *delivery) {
	dl.mu.Lock()
	if dl.completedEarly {
		dl.state = released
		dl.mu.Unlock()
		dl.keep.stop()
		x.report(dl, dl.msg.Ack())
		return
	}
	dl.state = held
	dl.heldAt = time.Now()
	dl.deadline = time.AfterFunc(x.lim.completionDeadline, func() { x.expire(dl) })
	dl.mu.Unlock()
	x.mu.Lock()
	x.held[dl.effect.ID] = dl
	x.mu.Unlock()
	x.km.held.Inc()
}

// completed lets a held message go once its completion was published.
func (x *executor) completed(dl *delivery) {
	dl.mu.Lock()
	switch dl.state {
	case running:
		dl.completedEarly = true
		dl.mu.Unlock()
		return
	case released:
		dl.mu.Unlock()
		return
	}
	dl.state = released
	dl.deadline.Stop()
	dl.mu.Unlock()
	x.unhold(dl)
	dl.keep.stop()
	x.report(dl, dl.msg.Ack())
}

// expire gives a held effect a new attempt: its completion is late.
func (x *executor) expire(dl *delivery) {
	dl.mu.Lock()
	if dl.state != held {
		dl.mu.Unlock()
		return
	}
	dl.state = released
	dl.mu.Unlock()
	x.unhold(dl)
	x.logger.Warn("async effect not completed by its deadline; it gets a new attempt",
		"effect_id", dl.effect.ID, "kind", x.kind, "attempt", dl.attempt, "deadline", x.lim.completionDeadline)
	err := fmt.Errorf("%w (%s)", errNoCompletion, x.lim.completionDeadline)
	x.apply(dl, decide(x.info(dl, false), result{err: err}))
}

func (x *executor) unhold(dl *delivery) {
	x.mu.Lock()
	if x.held[dl.effect.ID] == dl {
		delete(x.held, dl.effect.ID)
	}
	x.mu.Unlock()
	x.km.held.Dec()
}

// releaseHeld, at shutdown, gives every held effect back for redelivery
// when its deadline passes: its work may still complete it meanwhile.
func (x *executor) releaseHeld() {
	x.mu.Lock()
	all := make([]*delivery, 0, len(x.held))
	for _, dl := range x.held {
		all = append(all, dl)
	}
	x.mu.Unlock()
	for _, dl := range all {
		dl.mu.Lock()
		if dl.state != held {
			dl.mu.Unlock()
			continue
		}
		dl.state = released
		dl.deadline.Stop()
		left := time.Until(dl.heldAt.Add(x.lim.completionDeadline))
		dl.mu.Unlock()
		x.unhold(dl)
		dl.keep.stop()
		x.report(dl, dl.msg.NakWithDelay(max(left, time.Millisecond)))
	}
}

// listenCompletions lets a held effect go when anyone publishes its
// completion (a worker in another process through effects.Client, or a
// handler in another language). It is a plain NATS subscription: JetStream
// stores a completion and every subscriber of its subject also receives it.
func (x *executor) listenCompletions(nc *nats.Conn) (*nats.Subscription, error) {
	return nc.Subscribe(effects.CompletedSubject(x.kind), func(m *nats.Msg) {
		var c struct {
			EffectID string `json:"effect_id"`
		}
		if json.Unmarshal(m.Data, &c) != nil {
			return
		}
		x.mu.Lock()
		dl := x.held[c.EffectID]
		x.mu.Unlock()
		if dl != nil {
			x.completed(dl)
		}
	})
}
