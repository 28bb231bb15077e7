package keepalive

import (
	"context"
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
