package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// TestNoEffectLostWhenNATSRestarts restarts the NATS server while effects
// are being delivered, the way Hasura delivers them (a 503 is retried after
// its Retry-After), and checks that every accepted row is handled.
func TestNoEffectLostWhenNATSRestarts(t *testing.T) {
	var handled sync.Map
	reg := effects.NewRegistry()
	reg.Handle("work", func(_ context.Context, e effects.Effect) (any, error) {
		handled.Store(e.ID, true)
		return "done", nil
	})
	// A restart loses what is in flight: messages the server counted as
	// delivered but the client never got (still in the server's outbound
	// buffer at shutdown, or dropped by the client's pull iterator, which
	// after a reconnect asks for a full batch while its buffer, as large as
	// one batch, still holds messages from before), and acks sent into the
	// closing connection. JetStream redelivers those after the consumer's
	// ack wait, so the ack waits are short here: the defaults (90s for the
	// dispatcher, 30s for the completer) are longer than the test waits.
	const handlerTimeout = time.Second
	ackWait := handlerTimeout + dispatcher.AckWaitMargin
	completerAckWait := 2 * time.Second
	p := startPipeline(t, options{registry: reg, completerAckWait: completerAckWait, dispatcher: dispatcher.Config{
		Concurrency: 8, RetryBase: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		HandlerTimeout: handlerTimeout, AckWait: ackWait,
	}})

	const n = 300
	ids := make([]string, n)
	bodies := make([][]byte, n)
	for i := range n {
		var row []byte
		ids[i], row = p.insert("work", fmt.Sprintf(`{"i": %d}`, i))
		_, bodies[i] = p.event("INSERT", row)
	}

	var unavailable atomic.Int32
	deliver := func(body []byte) {
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); {
			r := p.postRaw(body)
			if r.Code == http.StatusOK {
				return
			}
			if r.Code != http.StatusServiceUnavailable || r.RetryAfter == "" {
				t.Errorf("reply %+v", r)
				return
			}
			unavailable.Add(1)
			time.Sleep(50 * time.Millisecond) // Hasura would wait Retry-After
		}
		t.Error("event never accepted")
	}

	var wg sync.WaitGroup
	next := make(chan []byte)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range next {
				deliver(body)
			}
		}()
	}
	for i, body := range bodies {
		if i == n/2 {
			p.nats.Restart(t)
		}
		next <- body
	}
	close(next)
	wg.Wait()

	// An effect lost in flight is handled one ack wait after its first
	// delivery, its completion written at most a completer ack wait later
	// (settled waits 30s per row).
	if ackWait+completerAckWait >= 25*time.Second {
		t.Fatalf("ack waits %s + %s leave settled too little time", ackWait, completerAckWait)
	}
	for _, id := range ids {
		if got := p.settled(id); got.Status != "succeeded" {
			t.Fatalf("row %s: %+v", id, got)
		}
		if _, ok := handled.Load(id); !ok {
			t.Fatalf("row %s succeeded without its handler running", id)
		}
	}
	t.Logf("%d deliveries answered 503 during the restart", unavailable.Load())
}
