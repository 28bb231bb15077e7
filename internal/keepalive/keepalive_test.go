package keepalive

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/effects-run/effects/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fetch publishes n messages to a stream of their own and takes them from a
// consumer whose ack wait is ackWait.
func fetch(t *testing.T, n int, ackWait time.Duration) (jetstream.Consumer, []jetstream.Msg) {
	t.Helper()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "K", Subjects: []string{"k"}}); err != nil {
		t.Fatal(err)
	}
	for range n {
		if _, err := js.Publish(ctx, "k", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "K", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != n {
		t.Fatalf("fetched %d of %d", len(msgs), n)
	}
	return cons, msgs
}

// again fetches what the consumer delivers again within wait.
func again(t *testing.T, cons jetstream.Consumer, n int, wait time.Duration) int {
	t.Helper()
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(wait))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for m := range batch.Messages() {
		got++
		_ = m.Ack()
	}
	return got
}

// Messages kept alive stay with their holder well past the ack wait, one
// message or a batch; stopped, they come back after it.
func TestKeptAliveMessagesAreNotRedelivered(t *testing.T) {
	t.Parallel()
	const ackWait = 600 * time.Millisecond
	for _, n := range []int{1, 3} {
		cons, msgs := fetch(t, n, ackWait)
		var k KeepAlive
		if n == 1 {
			k.Start(ackWait/3, msgs[0])
		} else {
			k.StartAll(ackWait/3, msgs)
		}
		if got := again(t, cons, n, 3*ackWait); got != 0 {
			t.Fatalf("%d of %d kept-alive messages delivered again", got, n)
		}
		k.Stop()
		if k.Armed() {
			t.Fatal("armed after Stop")
		}
		if got := again(t, cons, n, 10*ackWait); got != n {
			t.Fatalf("%d of %d messages delivered again after Stop", got, n)
		}
	}
}

// A stopped keep-alive is never re-armed, even when its timer fires at the
// same moment; one stopped before its start never starts.
func TestKeepAliveStaysStopped(t *testing.T) {
	var k KeepAlive
	k.Start(time.Hour, nil)
	if !k.Armed() {
		t.Fatal("not armed after Start")
	}
	k.Stop()
	k.fire() // a timer that fired just before Stop: must not send or re-arm
	if k.Armed() {
		t.Fatal("keep-alive armed after stop")
	}
	var early KeepAlive
	early.Stop()
	early.Start(time.Millisecond, nil)
	if early.Armed() {
		t.Fatal("started after Stop")
	}
	var none KeepAlive
	none.Start(0, nil)
	if none.Armed() {
		t.Fatal("armed with no interval")
	}
	none.Stop()
}

// A queue's members fall due in the order they joined, each the queue's
// time after it joined; a member that stays falls due again, one that
// leaves first never does.
func TestQueueFallsDueInOrder(t *testing.T) {
	t.Parallel()
	due := make(chan int, 10)
	stay := map[int]bool{1: true}
	q := NewQueue(50*time.Millisecond, func(m *Member) bool {
		due <- m.Value.(int)
		return stay[m.Value.(int)]
	})
	ms := make([]Member, 4)
	for i := range ms {
		ms[i].Value = i
		q.Join(&ms[i])
	}
	if !q.Leave(&ms[2]) || q.Leave(&ms[2]) {
		t.Fatal("Leave: want true, then false")
	}
	var got []int
	for len(got) < 4 {
		select {
		case i := <-due:
			got = append(got, i)
		case <-time.After(5 * time.Second):
			t.Fatalf("fell due: %v", got)
		}
	}
	// 0, 1 and 3 in order, then 1 again (it stays).
	if want := []int{0, 1, 3, 1}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("fell due %v, want %v", got, want)
	}
	if ms[0].In() || !ms[1].In() || ms[2].In() || ms[3].In() {
		t.Fatalf("in: %v %v %v %v", ms[0].In(), ms[1].In(), ms[2].In(), ms[3].In())
	}
	if !q.Leave(&ms[1]) || q.Len() != 0 {
		t.Fatal("the staying member did not leave")
	}
	for _, m := range []*Member{&ms[0], &ms[3]} {
		if q.Leave(m) {
			t.Fatal("Leave true for a member due took out")
		}
	}
}

// Leave waits for due running on the member: the queue is locked
// meanwhile.
func TestQueueLeaveWaitsForDue(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	q := NewQueue(time.Millisecond, func(*Member) bool {
		close(started)
		<-release
		return false
	})
	var m Member
	q.Join(&m)
	<-started
	if q.mu.TryLock() {
		t.Fatal("the queue is not locked while due runs")
	}
	close(release)
	q.Leave(&m)
	if m.In() {
		t.Fatal("still in after due took it out")
	}
}

// Messages in a keep-alive queue stay with their holder well past the ack
// wait; once they leave, they come back after it. A queue without a time
// keeps nothing.
func TestQueueKeepsMessagesAlive(t *testing.T) {
	t.Parallel()
	const ackWait = 600 * time.Millisecond
	cons, msgs := fetch(t, 3, ackWait)
	q := NewQueue(ackWait/3, func(m *Member) bool {
		_ = m.Value.(jetstream.Msg).InProgress()
		return true
	})
	ms := make([]Member, len(msgs))
	for i, msg := range msgs {
		ms[i].Value = msg
		q.Join(&ms[i])
	}
	if got := again(t, cons, 3, 3*ackWait); got != 0 {
		t.Fatalf("%d of 3 kept-alive messages delivered again", got)
	}
	for i := range ms {
		q.Leave(&ms[i])
	}
	if got := again(t, cons, 3, 10*ackWait); got != 3 {
		t.Fatalf("%d of 3 messages delivered again after they left", got)
	}
	var none Member
	NewQueue(0, nil).Join(&none)
	if none.In() {
		t.Fatal("a queue without a time took a member")
	}
}

// A Leave that finds the member taken out by due sees what due did (the
// dispatcher's watchdog makes a channel there that the worker then waits
// on): a Leave while due runs waits for it.
func TestQueueLeaveAfterDueSeesItsWork(t *testing.T) {
	t.Parallel()
	type job struct {
		m    Member
		done chan struct{}
	}
	started, release := make(chan struct{}), make(chan struct{})
	q := NewQueue(time.Millisecond, func(m *Member) bool {
		close(started)
		<-release
		j := m.Value.(*job)
		j.done = make(chan struct{})
		close(j.done)
		return false
	})
	j := &job{}
	j.m.Value = j
	q.Join(&j.m)
	<-started
	left := make(chan bool, 1)
	go func() { left <- q.Leave(&j.m) }()
	close(release)
	if <-left {
		t.Fatal("Leave true for a member due took out")
	}
	select {
	case <-j.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Leave returned before due's work was done")
	}
}
