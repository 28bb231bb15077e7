package keepalive

import (
	"sync"
	"sync/atomic"
	"time"
)

// Queue holds members that each fall due a fixed time after they join, on
// one timer for all of them. Since every member waits the same time, they
// fall due in the order they joined: joining appends to a list and leaving
// unlinks from it, where a timer per member (the dispatcher's delivery
// keep-alive and attempt watchdog, thousands a second) cost an allocation,
// and an insertion into and removal from the runtime's timer heap, each.
//
// A member that falls due is handed to the queue's due function, with the
// queue locked: Leave waits for it, so that what due does (an InProgress)
// never overlaps with what the member's owner does after leaving (an ack).
// due must be quick and must not use the queue; it returns whether the
// member stays (falling due again after the same time) or leaves.
type Queue struct {
	after time.Duration
	due   func(*Member) bool

	mu         sync.Mutex
	head, tail *Member
	t          *time.Timer
	armed      bool
}

// Member is one member of a Queue; embed it in what it stands for. The
// zero value is ready to join; a Member must not be copied once it joined.
type Member struct {
	// Value is the queue's business: what due acts on.
	Value any

	at         time.Time // when it falls due
	prev, next *Member
	in         atomic.Bool
}

// NewQueue returns a queue whose members fall due after (a duration of
// zero or less: never; Join does nothing).
func NewQueue(after time.Duration, due func(*Member) bool) *Queue {
	q := &Queue{after: after, due: due}
	if after > 0 {
		q.t = time.AfterFunc(time.Hour, q.fire)
		q.t.Stop()
	}
	return q
}

// Join appends m, which falls due after the queue's time unless it leaves
// first.
func (q *Queue) Join(m *Member) {
	if q.after <= 0 {
		return
	}
	now := time.Now()
	q.mu.Lock()
	m.at = now.Add(q.after)
	q.appendLocked(m)
	q.armLocked(now)
	q.mu.Unlock()
}

// Leave removes m. It returns once due is not running for m (and will not
// again); false when m was not in the queue (it never joined, left, or due
// took it out).
func (q *Queue) Leave(m *Member) bool {
	if !m.in.Load() {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !m.in.Load() {
		return false
	}
	q.unlinkLocked(m)
	return true
}

// In reports whether m is in a queue.
func (m *Member) In() bool { return m.in.Load() }

// Len is the number of members.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for m := q.head; m != nil; m = m.next {
		n++
	}
	return n
}

func (q *Queue) appendLocked(m *Member) {
	m.prev, m.next = q.tail, nil
	if q.tail != nil {
		q.tail.next = m
	} else {
		q.head = m
	}
	q.tail = m
	m.in.Store(true)
}

func (q *Queue) unlinkLocked(m *Member) {
	if m.prev != nil {
		m.prev.next = m.next
	} else {
		q.head = m.next
	}
	if m.next != nil {
		m.next.prev = m.prev
	} else {
		q.tail = m.prev
	}
	m.prev, m.next = nil, nil
	m.in.Store(false)
}

// armLocked sets the timer for the head, unless it is set: a timer that
// fires for a head that left finds the next one not due yet and is set
// again for it.
func (q *Queue) armLocked(now time.Time) {
	if q.armed || q.head == nil {
		return
	}
	q.armed = true
	q.t.Reset(q.head.at.Sub(now))
}

func (q *Queue) fire() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.armed = false
	now := time.Now()
	for m := q.head; m != nil && !m.at.After(now); m = q.head {
		// due runs while m is still in: Leave's unlocked check (m not in)
		// then means due is over, and what it wrote is seen.
		if !q.due(m) {
			q.unlinkLocked(m)
			continue
		}
		// It stays: to the tail, without ever looking out of the queue.
		m.at = now.Add(q.after)
		if m != q.tail {
			q.head = m.next
			q.head.prev = nil
			m.prev, m.next = q.tail, nil
			q.tail.next = m
			q.tail = m
		}
	}
	q.armLocked(now)
}
