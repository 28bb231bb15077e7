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

// hold begins holding a claimed async delivery (settle calls it): the
// deadline's timer starts and the executor's listener can find it. It is
// false when the completion arrived while the hold began (the caller acks
// it then). The executor's mu makes the hold's beginning one step for
// whoever ends it: they find the delivery (listener, releaseHeld) or stop
// its deadline (unhold) only once it is complete.
func (x *executor) hold(dl *delivery) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !dl.state.CompareAndSwap(deciding, held) {
		return false // decidingCompleted
	}
	dl.heldAt = time.Now()
	dl.deadline = time.AfterFunc(x.lim.completionDeadline, func() { x.expire(dl) })
	x.held[dl.effect.ID] = dl
	x.km.held.Inc()
	return true
}

// unhold ends the hold of a delivery claimed back from held.
func (x *executor) unhold(dl *delivery) {
	x.mu.Lock()
	defer x.mu.Unlock()
	dl.deadline.Stop()
	if x.held[dl.effect.ID] == dl {
		delete(x.held, dl.effect.ID)
	}
	x.km.held.Dec()
}

// completed lets an async delivery go once its completion was published:
// acked now if it is held, or as soon as its worker has decided (which then
// sees the completion, whatever the handler returned).
func (x *executor) completed(dl *delivery) {
	for {
		switch dl.state.Load() {
		case running:
			if dl.state.CompareAndSwap(running, runningCompleted) {
				return
			}
		case deciding:
			if dl.state.CompareAndSwap(deciding, decidingCompleted) {
				return
			}
		case held:
			if dl.claim(held) {
				x.unhold(dl)
				in := x.info(dl, false)
				in.completed, in.held = true, true
				x.settle(dl, decide(in, result{}))
				return
			}
		default:
			return // already known to be completed, or settled
		}
	}
}

// expire gives a held effect a new attempt: its completion is late.
func (x *executor) expire(dl *delivery) {
	if !dl.claim(held) {
		return // completed or released first
	}
	x.unhold(dl)
	x.logger.Warn("async effect not completed by its deadline; it gets a new attempt",
		"effect_id", dl.effect.ID, "kind", x.kind, "attempt", dl.attempt, "deadline", x.lim.completionDeadline)
	in := x.info(dl, false)
	in.held = true
	x.carry(dl, decide(in, result{err: fmt.Errorf("%w (%s)", errNoCompletion, x.lim.completionDeadline)}))
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
		if !dl.claim(held) {
			continue
		}
		x.unhold(dl)
		in := x.info(dl, true)
		in.held, in.heldUntil = true, dl.heldAt.Add(x.lim.completionDeadline)
		x.settle(dl, decide(in, result{givenBack: true}))
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
