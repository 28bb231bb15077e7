package effects_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

func TestConsumeCompletions(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	client := effects.NewClient(js)
	ref := func(id, kind string) effects.Ref {
		return effects.Ref{ID: id, Kind: kind, EventID: "ev-" + id, Attempt: 1}
	}
	// Published before the consumer exists: it starts at the start of
	// retention.
	if err := client.Complete(ctx, ref("00000000-0000-4000-8000-000000000001", "k"), "one"); err != nil {
		t.Fatal(err)
	}
	if err := client.Complete(ctx, ref("00000000-0000-4000-8000-000000000002", "other"), "not mine"); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, effects.CompletedSubject("k"), []byte(`{"not":"a completion"}`)); err != nil {
		t.Fatal(err)
	}
	if err := client.Fail(ctx, ref("00000000-0000-4000-8000-000000000003", "k"), errors.New("boom")); err != nil {
		t.Fatal(err)
	}

	got := make(chan effects.Completion, 20)
	calls := 0
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- effects.ConsumeCompletions(runCtx, js, "audit-completions", func(_ context.Context, c effects.Completion) error {
			calls++
			got <- c
			if calls == 1 {
				return errors.New("audit store down") // the first one comes back
			}
			return nil
		}, effects.CompletionKinds("k"), effects.CompletionsRetry(10*time.Millisecond, 20*time.Millisecond))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ConsumeCompletions: %v", err)
		}
	}()
	next := func() effects.Completion {
		t.Helper()
		select {
		case c := <-got:
			return c
		case <-time.After(15 * time.Second):
			t.Fatal("no completion in 15s")
			return effects.Completion{}
		}
	}
	seen := map[string]int{}
	for range 3 { // the first completion twice (nak, then ack), the failure once
		c := next()
		if c.Kind != "k" {
			t.Errorf("completion of kind %s given; only k was asked for", c.Kind)
		}
		seen[c.EffectID]++
	}
	if seen["00000000-0000-4000-8000-000000000001"] != 2 || seen["00000000-0000-4000-8000-000000000003"] != 1 {
		t.Errorf("deliveries by effect: %v; want the first twice (retried after an error), the failure once", seen)
	}
	// Everything settled: acked, or termed for the malformed message.
	deadline := time.Now().Add(15 * time.Second)
	for {
		cons, err := js.Consumer(ctx, effects.CompletedStream, "audit-completions")
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Consumer == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer not settled: %+v", info)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case c := <-got:
		t.Errorf("extra delivery %+v", c)
	default:
	}
}

func TestConsumeCompletionsRefusesTheServicesConsumers(t *testing.T) {
	t.Parallel()
	var js jetstream.JetStream // never reached
	h := func(context.Context, effects.Completion) error { return nil }
	for _, name := range []string{"", "effects-completer", "dispatcher-k", "a.b"} {
		if err := effects.ConsumeCompletions(context.Background(), js, name, h); err == nil {
			t.Errorf("durable %q accepted", name)
		}
	}
	if err := effects.ConsumeCompletions(context.Background(), js, "audit", nil); err == nil {
		t.Error("nil handler accepted")
	}
	if err := effects.ConsumeCompletions(context.Background(), js, "audit", h, effects.CompletionKinds("bad kind")); err == nil {
		t.Error("invalid kind accepted")
	}
}

func TestConsumeCompletionsFromNow(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	client := effects.NewClient(js)
	old := effects.Ref{ID: "00000000-0000-4000-8000-000000000001", Kind: "k", EventID: "ev-1", Attempt: 1}
	if err := client.Complete(ctx, old, "before"); err != nil {
		t.Fatal(err)
	}
	got := make(chan effects.Completion, 10)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- effects.ConsumeCompletions(runCtx, js, "fresh", func(_ context.Context, c effects.Completion) error {
			got <- c
			return nil
		}, effects.CompletionsFromNow())
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ConsumeCompletions: %v", err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := js.Consumer(ctx, effects.CompletedStream, "fresh"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("consumer not created: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fresh := effects.Ref{ID: "00000000-0000-4000-8000-000000000002", Kind: "k", EventID: "ev-2", Attempt: 1}
	if err := client.Complete(ctx, fresh, "after"); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-got:
		if c.EffectID != fresh.ID {
			t.Errorf("first completion given is %s; want only the one published after the consumer was created (%s)", c.EffectID, fresh.ID)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no completion in 15s")
	}
}

// A reader's consumer deleted under it (by an operator, say) is created
// again where it was, as the dispatcher's are: the reader goes on, instead
// of returning, with what was published since (even while it was gone),
// and is not given again what it had acked.
func TestConsumeCompletionsRecreatesADeletedConsumer(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	client := effects.NewClient(js)
	complete := func(id string) {
		t.Helper()
		if err := client.Complete(ctx, effects.Ref{ID: id, Kind: "k", EventID: "ev-" + id, Attempt: 1}, "done"); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan string, 20)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- effects.ConsumeCompletions(runCtx, js, "audit-recreated", func(_ context.Context, c effects.Completion) error {
			got <- c.EffectID
			return nil
		}, effects.CompletionsFromNow())
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ConsumeCompletions: %v", err)
		}
	}()
	waitFor := func(id string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case g := <-got:
				if g == id {
					return
				}
			case err := <-done:
				t.Fatalf("ConsumeCompletions returned %v while waiting for %s", err, id)
			case <-timeout:
				t.Fatalf("%s not given to the handler in 30s", id)
			}
		}
	}
	// The consumer exists once ConsumeCompletions runs.
	for {
		if _, err := js.Consumer(ctx, effects.CompletedStream, "audit-recreated"); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	complete("00000000-0000-4000-8000-000000000001")
	waitFor("00000000-0000-4000-8000-000000000001")

	if err := js.DeleteConsumer(ctx, effects.CompletedStream, "audit-recreated"); err != nil {
		t.Fatal(err)
	}
	complete("00000000-0000-4000-8000-000000000002") // while it is gone
	select {
	case g := <-got:
		if g != "00000000-0000-4000-8000-000000000002" {
			t.Fatalf("after the loss the handler got %s first; want the completion published since", g)
		}
	case err := <-done:
		t.Fatalf("ConsumeCompletions returned %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("nothing given to the handler in 30s after the loss")
	}
}

// A team's consumer deleted while its reader was stopped (no process reads
// it) is not read from the start of retention again: the next
// ConsumeCompletions resumes after the ack floor the stopped one recorded,
// so each completion is given to the handler once.
func TestConsumeCompletionsResumesAConsumerDeletedWhileStopped(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	client := effects.NewClient(js)
	var mu sync.Mutex
	calls := map[string]int{}
	complete := func(n int) []string {
		t.Helper()
		var ids []string
		for range n {
			id := fmt.Sprintf("00000000-0000-4000-8000-%012d", completionSeq.Add(1))
			if err := client.Complete(ctx, effects.Ref{ID: id, Kind: "k", EventID: "ev-" + id, Attempt: 1}, "done"); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		return ids
	}
	// run reads until every id was handled and the consumer holds
	// nothing more, then stops the reader.
	run := func(ids []string) {
		t.Helper()
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- effects.ConsumeCompletions(runCtx, js, "audit-stopped", func(_ context.Context, c effects.Completion) error {
				mu.Lock()
				calls[c.EffectID]++
				mu.Unlock()
				return nil
			})
		}()
		testenv.WaitFor(t, 30*time.Second, "every completion handled and acked", func() bool {
			mu.Lock()
			for _, id := range ids {
				if calls[id] == 0 {
					mu.Unlock()
					return false
				}
			}
			mu.Unlock()
			cons, err := js.Consumer(ctx, effects.CompletedStream, "audit-stopped")
			if err != nil {
				return false
			}
			info, err := cons.Info(ctx)
			return err == nil && info.NumPending == 0 && info.NumAckPending == 0
		})
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("ConsumeCompletions: %v", err)
		}
	}
	first := complete(20)
	run(first)
	if err := js.DeleteConsumer(ctx, effects.CompletedStream, "audit-stopped"); err != nil {
		t.Fatal(err)
	}
	whileStopped := complete(5)
	run(whileStopped)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range append(first, whileStopped...) {
		if calls[id] != 1 {
			t.Errorf("completion of %s given %d times, want 1", id, calls[id])
		}
	}
}

var completionSeq atomic.Int64
