package completer

import (
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestIntakeNeverBlocksOnceClosed: once closed, the intake hands every
// message back at once, also to a callback already waiting for room.
func TestIntakeNeverBlocksOnceClosed(t *testing.T) {
	var mu sync.Mutex
	var back []jetstream.Msg
	in := newIntake(1, func(m jetstream.Msg) { mu.Lock(); back = append(back, m); mu.Unlock() })
	in.deliver(fakeMsg{}) // fills the queue
	waiting := make(chan struct{})
	go func() {
		defer close(waiting)
		in.deliver(fakeMsg{}) // no writer takes the first: it waits
	}()
	in.close()
	<-waiting
	in.deliver(fakeMsg{}) // after close: straight back
	if n := in.handBackQueued(); n != 1 {
		t.Errorf("handed back %d queued messages, want 1", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(back) != 3 {
		t.Errorf("%d messages handed back, want 3", len(back))
	}
}

// fakeMsg is a message that is never settled (the intake only passes it on).
type fakeMsg struct{ jetstream.Msg }
