package completer_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// Defect 5 of issue 17: a deleted completer consumer stopped the completer
// for good ("restart the completer"): completions piled up, no row was
// written. The completer creates it again from where it was (no completion
// it wrote is delivered again) and is not ready meanwhile.
func TestDeletedConsumerIsCreatedAgainWhereItWas(t *testing.T) {
	b := setup(t, setupOpts{})
	_, admin := b.nats.Connect(t)
	write := func(n int) []string { return b.succeedRows(t, n) }
	wait := func(ids []string) { b.waitSucceeded(t, ids) }
	first := write(50)
	wait(first)
	floor := b.waitSettled(t).AckFloor.Stream
	if err := admin.DeleteConsumer(context.Background(), effects.CompletedStream, completer.ConsumerName); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "not ready while the consumer is gone", func() bool {
		return b.c.CheckConsuming(context.Background()) != nil
	})
	second := write(50)
	wait(second)
	if err := b.c.CheckConsuming(context.Background()); err != nil {
		t.Fatalf("not ready after the consumer is back: %v", err)
	}
	info := b.waitSettled(t)
	if info.Config.DeliverPolicy != jetstream.DeliverByStartSequencePolicy || info.Config.OptStartSeq > floor+1 {
		t.Fatalf("consumer created again with %s at %d; want by start sequence at the last ack floor it read (at most %d)",
			info.Config.DeliverPolicy, info.Config.OptStartSeq, floor+1)
	}
	// What it wrote before the loss and the new consumer delivered again
	// (the floor it had read may lag) was settled again, not written again.
	again := b.metric(t, "effects_consumer_settled_again_total", "consumer", completer.ConsumerName)
	if unchanged := b.metric(t, "effects_completions_skipped_total", "reason", completer.ReasonUnchanged); unchanged != 0 ||
		again != float64(floor+1-info.Config.OptStartSeq) {
		t.Fatalf("%v completions written again (unchanged), %v settled again; want 0 and %d", unchanged, again, floor+1-info.Config.OptStartSeq)
	}
}

// succeedRows inserts n pending rows and publishes a success of each.
func (b *bundle) succeedRows(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	now := time.Now()
	for range n {
		id := b.insert(t, "echo")
		b.publish(t, succeeded(id, now, `"ok"`))
		ids = append(ids, id)
	}
	return ids
}

// waitSucceeded waits until every row of ids is written succeeded.
func (b *bundle) waitSucceeded(t *testing.T, ids []string) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, "every row written", func() bool {
		for _, id := range ids {
			if b.row(t, id).Status != string(effects.StatusSucceeded) {
				return false
			}
		}
		return true
	})
}

// The completer's consumer deleted while no completer runs (a deploy): it
// could not be told from a new one, and the next completer created it with
// DeliverAll and read every completion the stream held again. It resumes
// after the ack floor the stopped completer recorded: no completion written
// before comes again (none written twice), and those published while it
// was down are written.
func TestConsumerDeletedWhileNoCompleterRunsIsNotReadAgain(t *testing.T) {
	b := setup(t, setupOpts{})
	_, admin := b.nats.Connect(t)
	first := b.succeedRows(t, 50)
	b.waitSucceeded(t, first)
	floor := b.waitSettled(t).AckFloor.Stream
	if err := b.stopAndWait(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteConsumer(context.Background(), effects.CompletedStream, completer.ConsumerName); err != nil {
		t.Fatal(err)
	}
	whileDown := b.succeedRows(t, 50)

	b.start(t)
	b.waitSucceeded(t, whileDown)
	info := b.waitSettled(t)
	if info.Config.DeliverPolicy != jetstream.DeliverByStartSequencePolicy || info.Config.OptStartSeq != floor+1 {
		t.Errorf("created with %s at %d; want by start sequence after the recorded floor, at %d", info.Config.DeliverPolicy, info.Config.OptStartSeq, floor+1)
	}
	if unchanged := b.metric(t, "effects_completions_skipped_total", "reason", completer.ReasonUnchanged); unchanged != 0 {
		t.Errorf("%v completions written before were read and written again", unchanged)
	}
	if n := b.metric(t, "effects_consumer_recreated_total", "consumer", completer.ConsumerName); n != 1 {
		t.Errorf("effects_consumer_recreated_total %v, want 1", n)
	}
}
