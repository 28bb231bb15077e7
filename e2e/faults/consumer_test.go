//go:build faults

package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/faulttest"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// deleteConsumer deletes a durable consumer as an operator would with
// `nats consumer rm`, and waits until it exists again.
func (st *stack) deleteConsumer(stream, name string) time.Time {
	st.t.Helper()
	_, js := st.nats.Connect(st.t)
	if err := js.DeleteConsumer(context.Background(), stream, name); err != nil {
		st.t.Fatal(err)
	}
	deleted := time.Now()
	st.waitUntil(30*time.Second, name+" created again", func() bool {
		_, err := js.Consumer(context.Background(), stream, name)
		return err == nil
	})
	return deleted
}

// recreatedOnce checks that svc created its consumer again once.
func recreatedOnce(t *testing.T, svc *faulttest.Service) {
	t.Helper()
	if n := faulttest.MetricValue(svc.Metrics(t), "effects_consumer_recreated_total"); n != 1 {
		t.Errorf("%s: effects_consumer_recreated_total %v, want 1", svc.Name, n)
	}
}

// A kind's dispatcher consumer deleted by hand under load is created again
// from its last ack floor: no effect of the stream runs again but those in
// flight at the deletion (whose acks went to the deleted consumer), and
// those the dispatcher had acked above the floor it last read are settled
// again without running.
func TestDispatcherConsumerDeletedByHand(t *testing.T) {
	st := start(t, setup{source: "table", target: faulttest.TargetConfig{Delay: 200 * time.Millisecond}})
	const n = 2000
	inserted := st.insertOverTime(n, 200, 100*time.Millisecond)
	st.waitUntil(30*time.Second, "handlers in flight after some effects ran", func() bool {
		return st.target.InFlight() >= concurrency/2 && st.finalInTable() >= 300
	})
	inFlight, final := st.target.InFlight(), st.finalInTable()
	deleted := st.deleteConsumer(effects.EffectsStream, dispatcher.ConsumerName(kind))
	ids := <-inserted
	heal := st.waitFinal(ids, deleted)
	st.verify(faulttest.Result{
		Fault:           "dispatcher consumer deleted by hand",
		Injection:       fmt.Sprintf("`nats consumer rm EFFECTS dispatcher-%s` after %d rows final, %d calls in flight (table source, rows still being inserted)", kind, final, inFlight),
		RunTwiceAllowed: "allowed: ≤ handlers in flight at the deletion",
		Heal:            heal,
	}, ids, nil, int(inFlight))
	recreatedOnce(t, st.dispatcher)
}

// The completer's consumer deleted by hand under load is created again
// from its last ack floor: the completer goes on (it stopped for good
// before), and a completion written before the deletion that comes again is
// settled again, or rewritten as a no-op.
func TestCompleterConsumerDeletedByHand(t *testing.T) {
	st := start(t, setup{source: "table"})
	const n = 3000
	inserted := st.insertOverTime(n, 150, 50*time.Millisecond)
	st.waitUntil(30*time.Second, "completions being written", func() bool { return st.finalInTable() >= 500 })
	final := st.finalInTable()
	deleted := st.deleteConsumer(effects.CompletedStream, completer.ConsumerName)
	ids := <-inserted
	heal := st.waitFinal(ids, deleted)
	st.verify(faulttest.Result{
		Fault:     "completer consumer deleted by hand",
		Injection: fmt.Sprintf("`nats consumer rm EFFECTS_COMPLETED %s` after %d rows written (table source, rows still being inserted)", completer.ConsumerName, final),
		Heal:      heal,
	}, ids, nil, 0)
	recreatedOnce(t, st.completer)
}

// A kind's consumer deleted by hand while the dispatcher is down (stopped
// for a deploy), then the dispatcher started: no process read the consumer
// when it went, so only the position the stopped dispatcher recorded in the
// bucket EFFECTS_CONSUMER_POSITIONS tells it from a new one. Before, it was
// created with DeliverAll and every effect of the kind the stream held ran
// again; it resumes after the recorded ack floor.
func TestConsumerDeletedWhileTheDispatcherIsDown(t *testing.T) {
	st := start(t, setup{source: "table", target: faulttest.TargetConfig{Delay: 200 * time.Millisecond}})
	const n = 2000
	inserted := st.insertOverTime(n, 200, 100*time.Millisecond)
	st.waitUntil(30*time.Second, "handlers in flight after some effects ran", func() bool {
		return st.target.InFlight() >= concurrency/2 && st.finalInTable() >= 300
	})
	inFlight := st.target.InFlight()
	code, took := st.dispatcher.Term(t)
	checkExit(t, st.dispatcher, code, took)
	final := st.finalInTable()
	_, js := st.nats.Connect(t)
	name := dispatcher.ConsumerName(kind)
	if err := js.DeleteConsumer(context.Background(), effects.EffectsStream, name); err != nil {
		t.Fatal(err)
	}
	st.dispatcher.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	st.verify(faulttest.Result{
		Fault: "dispatcher consumer deleted while the dispatcher is down",
		Injection: fmt.Sprintf("SIGTERM to the dispatcher with %d calls in flight (exit %d after %s), `nats consumer rm EFFECTS %s` with %d rows final, dispatcher started again (table source, rows still being inserted)",
			inFlight, code, took.Round(10*time.Millisecond), name, final),
		RunTwiceAllowed: "allowed: ≤ handlers in flight at the stop",
		Heal:            heal,
	}, ids, nil, int(inFlight))
	recreatedOnce(t, st.dispatcher)
	if !st.dispatcher.Process().HasLog("the consumer was lost while no process read it (deleted, or lost with the server's store); created it again after its recorded ack floor, not from the start of the stream") {
		t.Error("the restarted dispatcher did not say it resumed a lost consumer")
	}
}
