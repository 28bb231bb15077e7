// Package keepalive tells JetStream that messages still being worked on are
// in progress (InProgress resets their ack timer), so that a message held
// longer than the ack wait is not delivered to someone else meanwhile: the
// completer's batch whose write is slow or retried ([KeepAlive]), the
// dispatcher's deliveries waiting for their rate limit, handler or async
// completion (a [Queue] per kind, which also times the dispatcher's
// attempts).
package keepalive

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// KeepAlive sends InProgress for its messages every interval until
// stopped. It runs on a timer, not a goroutine, and is never re-armed once
// stopped. The zero value is ready for one Start or StartAll; a KeepAlive
// must not be copied after it.
type KeepAlive struct {
	mu      sync.Mutex
	one     jetstream.Msg
	many    []jetstream.Msg
	every   time.Duration
	t       *time.Timer
	stopped bool
}

// Start sends InProgress for msg every interval; an interval of zero or
// less sends nothing.
func (k *KeepAlive) Start(every time.Duration, msg jetstream.Msg) {
	k.start(every, msg, nil)
}

// StartAll is Start for several messages (a batch). The slice must not
// change until Stop.
func (k *KeepAlive) StartAll(every time.Duration, msgs []jetstream.Msg) {
	k.start(every, nil, msgs)
}

func (k *KeepAlive) start(every time.Duration, one jetstream.Msg, many []jetstream.Msg) {
	// Held while the timer is set: with a short interval fire can run
	// before AfterFunc has returned, and it reads k.t.
	k.mu.Lock()
	defer k.mu.Unlock()
	k.one, k.many, k.every = one, many, every
	if every > 0 && !k.stopped {
		k.t = time.AfterFunc(every, k.fire)
	}
}

func (k *KeepAlive) fire() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	// A lost InProgress is made up by the next; one that never arrives
	// only risks a redelivery, which the pipeline makes harmless.
	if k.one != nil {
		_ = k.one.InProgress()
	}
	for _, m := range k.many {
		_ = m.InProgress()
	}
	k.t.Reset(k.every)
}

// Stop ends the keep-alive. It returns once no InProgress is being or will
// be sent, so that the caller may ack, nak or term the messages. Stopping
// twice, or before a start, is harmless.
func (k *KeepAlive) Stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	if k.t != nil {
		k.t.Stop()
	}
}

// Armed reports whether InProgress may still be sent.
func (k *KeepAlive) Armed() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.t != nil && !k.stopped
}
