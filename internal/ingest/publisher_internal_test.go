package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

type pubResult struct {
	ack pubAck
	err error
}

func effectMsg(i int) *nats.Msg {
	return EffectMsg(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), "echo", []byte(`{}`), time.Now(), fmt.Sprintf("ev-%d", i))
}

func startPublisher(t *testing.T) (*natsPublisher, jetstream.JetStream) {
	t.Helper()
	nc, js := testenv.StartNATS(t).Connect(t)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	p := newNATSPublisher(nc)
	p.linger = time.Hour // a test that waited for it would time out
	return p, js
}

func (p *natsPublisher) state() (queued, inflight, waiting int, leading bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue), p.inflight, len(p.waiting), p.leader != nil
}

// fakeStream answers publishes on effects.> as JetStream would, but only
// when the test says: got holds the messages received, in order.
type fakeStream struct {
	nc  *nats.Conn
	got chan *nats.Msg
	seq uint64
}

func startFakeStream(t *testing.T, n *testenv.NATS) *fakeStream {
	t.Helper()
	nc, _ := n.Connect(t)
	f := &fakeStream{nc: nc, got: make(chan *nats.Msg, 100)}
	if _, err := nc.Subscribe("effects.>", func(m *nats.Msg) { f.got <- m }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

// receive returns the next message the fake stream received.
func (f *fakeStream) receive(t *testing.T) *nats.Msg {
	t.Helper()
	select {
	case m := <-f.got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message reached the stream in 10s")
		return nil
	}
}

// ack answers m as stored.
func (f *fakeStream) ack(t *testing.T, m *nats.Msg) {
	t.Helper()
	f.seq++
	if err := f.nc.Publish(m.Reply, fmt.Appendf(nil, `{"stream":"EFFECTS","seq":%d}`, f.seq)); err != nil {
		t.Fatal(err)
	}
}

func publishAsync(p *natsPublisher, msg *nats.Msg, timeout time.Duration) chan pubResult {
	r := make(chan pubResult, 1)
	go func() {
		ack, err := p.publish(msg, timeout)
		r <- pubResult{ack, err}
	}()
	return r
}

func result(t *testing.T, r chan pubResult) pubResult {
	t.Helper()
	select {
	case res := <-r:
		return res
	case <-time.After(10 * time.Second):
		t.Fatal("no answer in 10s")
		return pubResult{}
	}
}

// One batch at a time is in flight: a request that finds none sends at
// once; those that come while one is in flight are held and sent together
// once its ack is in.
func TestPublisherHoldsEffectsWhileABatchIsInFlight(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	stream := startFakeStream(t, n)
	nc, _ := n.Connect(t)
	p := newNATSPublisher(nc)
	p.linger = time.Hour // a test that waited for it would time out

	first := publishAsync(p, effectMsg(1), time.Minute)
	m1 := stream.receive(t)
	second := publishAsync(p, effectMsg(2), time.Minute)
	third := publishAsync(p, effectMsg(3), time.Minute)
	testenv.WaitFor(t, 5*time.Second, "two effects to queue behind the one in flight", func() bool {
		q, inflight, waiting, leading := p.state()
		return q == 2 && inflight == 1 && waiting == 3 && leading
	})
	select {
	case m := <-stream.got:
		t.Fatalf("%s was sent while a batch was in flight", m.Data)
	default:
	}

	stream.ack(t, m1)
	if r := result(t, first); r.err != nil || r.ack.seq != 1 {
		t.Fatalf("first: %+v", r)
	}
	m2, m3 := stream.receive(t), stream.receive(t)
	if q, inflight, _, leading := p.state(); q != 0 || inflight != 2 || leading {
		t.Errorf("after the queue was sent: %d queued, %d in flight, leading %v", q, inflight, leading)
	}
	stream.ack(t, m2)
	stream.ack(t, m3)
	for _, r := range []chan pubResult{second, third} {
		if res := result(t, r); res.err != nil {
			t.Fatal(res.err)
		}
	}
	if q, inflight, waiting, leading := p.state(); q != 0 || inflight != 0 || waiting != 0 || leading {
		t.Errorf("at the end: %d queued, %d in flight, %d waiting, leading %v", q, inflight, waiting, leading)
	}
}

// A full queue is sent without waiting for the batch in flight.
func TestPublisherSendsAFullQueue(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	stream := startFakeStream(t, n)
	nc, _ := n.Connect(t)
	p := newNATSPublisher(nc)
	p.linger = time.Hour
	p.batch = 2

	publishAsync(p, effectMsg(1), time.Minute)
	stream.receive(t)
	publishAsync(p, effectMsg(2), time.Minute)
	publishAsync(p, effectMsg(3), time.Minute)
	stream.receive(t)
	stream.receive(t)
}

// A queued request that gives up before its batch goes is not sent.
func TestPublisherDropsAQueuedEffectThatGaveUp(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	stream := startFakeStream(t, n)
	nc, _ := n.Connect(t)
	p := newNATSPublisher(nc)
	p.linger = time.Hour

	publishAsync(p, effectMsg(1), time.Minute)
	m1 := stream.receive(t)
	second := publishAsync(p, effectMsg(2), time.Minute) // leads the queue
	testenv.WaitFor(t, 5*time.Second, "the second to lead", func() bool { _, _, _, leading := p.state(); return leading })
	third := publishAsync(p, effectMsg(3), 50*time.Millisecond)
	if r := result(t, third); !errors.Is(r.err, errPublishTimeout) {
		t.Fatalf("third: %+v, want a timeout", r)
	}
	stream.ack(t, m1)
	m2 := stream.receive(t)
	if !strings.Contains(string(m2.Data), "000000000002") {
		t.Fatalf("sent %s, want the second effect", m2.Data)
	}
	stream.ack(t, m2)
	if r := result(t, second); r.err != nil {
		t.Fatal(r.err)
	}
	select {
	case m := <-stream.got:
		t.Fatalf("%s was sent after its request gave up", m.Data)
	default:
	}
	if q, inflight, waiting, _ := p.state(); q != 0 || inflight != 0 || waiting != 0 {
		t.Errorf("at the end: %d queued, %d in flight, %d waiting", q, inflight, waiting)
	}
}

// A request alone is sent at once (the linger here is an hour), and a
// duplicate is answered with the original's sequence.
func TestPublisherSendsALoneRequestAtOnce(t *testing.T) {
	t.Parallel()
	p, _ := startPublisher(t)
	for i, tc := range []struct {
		msg  int
		want pubAck
	}{{0, pubAck{seq: 1}}, {0, pubAck{seq: 1, duplicate: true}}, {1, pubAck{seq: 2}}} {
		want := tc.want
		done := make(chan pubResult, 1)
		go func() {
			ack, err := p.publish(effectMsg(tc.msg), time.Minute)
			done <- pubResult{ack, err}
		}()
		select {
		case r := <-done:
			if r.err != nil || r.ack != want {
				t.Errorf("publish %d: %+v, want %+v", i, r, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("publish %d: no answer in 10s", i)
		}
	}
}

// A request waiting for its ack when the connection is lost is answered at
// once, as jetstream's futures are, not at its timeout.
func TestPublisherFailsWaitingRequestsOnDisconnect(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc, _ := n.Connect(t)
	// Something takes the subject, nothing stores it: no ack ever comes.
	if _, err := nc.Subscribe("effects.>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	p := newNATSPublisher(nc)
	done := make(chan error, 1)
	go func() {
		_, err := p.publish(effectMsg(1), time.Hour)
		done <- err
	}()
	testenv.WaitFor(t, 5*time.Second, "the publish to wait for its ack", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.waiting) == 1 && len(p.queue) == 0 && p.leader == nil
	})
	n.Shutdown()
	select {
	case err := <-done:
		if !errors.Is(err, errPubDisconnected) {
			t.Errorf("error %v, want %v", err, errPubDisconnected)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting request was not answered when the connection was lost")
	}
}

// A publish without an ack in time gives up with the timeout's error, and
// the ack that never came leaves nothing behind.
func TestPublisherTimesOut(t *testing.T) {
	t.Parallel()
	nc, _ := testenv.StartNATS(t).Connect(t)
	if _, err := nc.Subscribe("effects.>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	p := newNATSPublisher(nc)
	_, err := p.publish(effectMsg(1), 50*time.Millisecond)
	if !errors.Is(err, errPublishTimeout) || err.Error() != "no ack within 50ms (EFFECTS_PUBLISH_TIMEOUT)" {
		t.Errorf("error %v", err)
	}
	if q, inflight, waiting, leading := p.state(); q != 0 || inflight != 0 || waiting != 0 || leading {
		t.Errorf("after the timeout: %d queued, %d in flight, %d waiting, leading %v", q, inflight, waiting, leading)
	}
}

func TestParsePubAck(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want pubAck
		err  string
	}{
		{`{"stream":"EFFECTS","seq":12}`, pubAck{seq: 12}, ""},
		{`{"stream":"EFFECTS", "domain":"hub", "seq":12,"duplicate":true}`, pubAck{seq: 12, duplicate: true}, ""},
		{`{"stream":"EFFECTS","seq":7,"duplicate":false}`, pubAck{seq: 7}, ""},
		{`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"EFFECTS","seq":0}`,
			pubAck{}, "nats: API error: code=503 err_code=10077 description=maximum messages exceeded"},
		{`{"seq":3}`, pubAck{}, jetstream.ErrInvalidJSAck.Error()},
		{`not json`, pubAck{}, jetstream.ErrInvalidJSAck.Error()},
		{`{"stream":"E\u0046","seq":3}`, pubAck{seq: 3}, ""},
	} {
		got, err := parsePubAck([]byte(tc.in))
		if got != tc.want || (err == nil) != (tc.err == "") || err != nil && err.Error() != tc.err {
			t.Errorf("%s: %+v, %v; want %+v, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// FuzzParsePubAck holds the hand-written PubAck reader to encoding/json's:
// whatever it reads, encoding/json reads the same.
func FuzzParsePubAck(f *testing.F) {
	for _, s := range []string{
		`{"stream":"EFFECTS","seq":12}`, `{"stream":"EFFECTS","seq":12,"duplicate":true}`,
		`{"stream":"","seq":1}`, `{"Stream":"E","seq":1}`, `{"stream":"E","seq":-1}`, `{"stream":"E","seq":1.5}`,
		`{"stream":"E","seq":18446744073709551616}`, `{"stream":"E","stream":"F","seq":1}`, `{"stream":"E","seq":1,"duplicate":null}`,
		`{"stream":"E","seq":null}`, `{"stream":"E","seq":"1"}`, `{"stream":"E","seq":1,"error":null}`, ` {"stream" : "E" , "seq" : 1 } `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := parsePubAckFast(data)
		if !ok {
			return
		}
		ref, err := parsePubAckJSON(data)
		if err != nil || ref != fast {
			var v any
			t.Fatalf("%q: fast %+v, encoding/json %+v, %v (valid JSON %v)", data, fast, ref, err, json.Unmarshal(data, &v) == nil)
		}
	})
}
