package jspub

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

// result is a Waiter that hands its answer to the test.
type result chan answer

type answer struct {
	ack Ack
	err error
}

func (r result) Published(ack Ack, err error) { r <- answer{ack, err} }

func (r result) wait(t *testing.T) answer {
	t.Helper()
	select {
	case a := <-r:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no answer in 10s")
		return answer{}
	}
}

func effectMsg(i int) *nats.Msg {
	m := nats.NewMsg(effects.Subject("echo"))
	m.Data = fmt.Appendf(nil, `{"id":"00000000-0000-4000-8000-%012d"}`, i)
	m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("ev-%d", i))
	return m
}

func (p *Publisher) state() (queued, inflight, waiting int, armed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue), p.inflight, len(p.waiting), p.armed
}

// fakeStream answers publishes on effects.> as JetStream would, but only
// when the test says.
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

func (f *fakeStream) nothing(t *testing.T, what string) {
	t.Helper()
	if err := f.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-f.got:
		t.Fatalf("%s: %s was sent", what, m.Data)
	default:
	}
}

func (f *fakeStream) ack(t *testing.T, m *nats.Msg) {
	t.Helper()
	f.seq++
	if err := f.nc.Publish(m.Reply, fmt.Appendf(nil, `{"stream":"EFFECTS","seq":%d}`, f.seq)); err != nil {
		t.Fatal(err)
	}
}

func startFake(t *testing.T) (*Publisher, *fakeStream) {
	t.Helper()
	n := testenv.StartNATS(t)
	stream := startFakeStream(t, n)
	nc, _ := n.Connect(t)
	return New(nc, Options{Linger: time.Hour}), stream // a test that waited for the linger would time out
}

// One batch at a time is in flight: a message published while none is
// goes out at once; those published while one is are held and sent
// together once its PubAck is in.
func TestOneBatchInFlight(t *testing.T) {
	t.Parallel()
	p, stream := startFake(t)
	first, second, third := make(result, 1), make(result, 1), make(result, 1)
	if _, err := p.Publish(effectMsg(1), first); err != nil {
		t.Fatal(err)
	}
	m1 := stream.receive(t)
	for i, r := range []result{second, third} {
		if _, err := p.Publish(effectMsg(2+i), r); err != nil {
			t.Fatal(err)
		}
	}
	if q, inflight, waiting, armed := p.state(); q != 2 || inflight != 1 || waiting != 3 || !armed {
		t.Fatalf("%d queued, %d in flight, %d waiting, linger armed %v; want 2, 1, 3, true", q, inflight, waiting, armed)
	}
	stream.nothing(t, "a batch in flight")

	stream.ack(t, m1)
	if a := first.wait(t); a.err != nil || a.ack.Seq != 1 {
		t.Fatalf("first: %+v", a)
	}
	m2, m3 := stream.receive(t), stream.receive(t)
	stream.ack(t, m2)
	stream.ack(t, m3)
	for _, r := range []result{second, third} {
		if a := r.wait(t); a.err != nil {
			t.Fatal(a.err)
		}
	}
	if q, inflight, waiting, armed := p.state(); q != 0 || inflight != 0 || waiting != 0 || armed {
		t.Errorf("at the end: %d queued, %d in flight, %d waiting, armed %v", q, inflight, waiting, armed)
	}
}

// The queue goes out once full, or after the linger, without waiting for
// the batch in flight.
func TestFullQueueAndLinger(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	stream := startFakeStream(t, n)
	nc, _ := n.Connect(t)
	p := New(nc, Options{Linger: time.Hour, Batch: 2})
	for i := range 3 {
		if _, err := p.Publish(effectMsg(i), make(result, 1)); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		stream.receive(t)
	}

	p = New(nc, Options{Linger: 50 * time.Millisecond})
	for i := range 2 {
		if _, err := p.Publish(effectMsg(10+i), make(result, 1)); err != nil {
			t.Fatal(err)
		}
	}
	stream.receive(t) // at once
	stream.receive(t) // after the linger, the first never answered
	p.Close()
}

// A message whose waiter gave up before its batch went is not sent, and the
// waiter is never told.
func TestForgottenIsNotSent(t *testing.T) {
	t.Parallel()
	p, stream := startFake(t)
	first, second, third := make(result, 1), make(result, 1), make(result, 1)
	if _, err := p.Publish(effectMsg(1), first); err != nil {
		t.Fatal(err)
	}
	m1 := stream.receive(t)
	if _, err := p.Publish(effectMsg(2), second); err != nil {
		t.Fatal(err)
	}
	tok, err := p.Publish(effectMsg(3), third)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Forget(tok) || p.Forget(tok) {
		t.Fatal("Forget: want true once, then false")
	}
	stream.ack(t, m1)
	m2 := stream.receive(t)
	if !strings.Contains(string(m2.Data), "000000000002") {
		t.Fatalf("sent %s, want the second", m2.Data)
	}
	stream.ack(t, m2)
	second.wait(t)
	stream.nothing(t, "after its waiter gave up")
	select {
	case a := <-third:
		t.Fatalf("a forgotten waiter was told %+v", a)
	default:
	}
	if q, inflight, waiting, _ := p.state(); q != 0 || inflight != 0 || waiting != 0 {
		t.Errorf("at the end: %d queued, %d in flight, %d waiting", q, inflight, waiting)
	}
}

// Expire tells the waiters of messages sent before a time; the rest wait on.
func TestExpire(t *testing.T) {
	t.Parallel()
	p, stream := startFake(t)
	old := make(result, 1)
	if _, err := p.Publish(effectMsg(1), old); err != nil {
		t.Fatal(err)
	}
	stream.receive(t)
	cut := time.Now()
	if n := p.Expire(cut.Add(-time.Hour), errors.New("late")); n != 0 {
		t.Fatalf("expired %d sent after the cut", n)
	}
	errLate := errors.New("late")
	if n := p.Expire(cut.Add(time.Millisecond), errLate); n != 1 {
		t.Fatalf("expired %d, want 1", n)
	}
	if a := old.wait(t); !errors.Is(a.err, errLate) {
		t.Fatalf("told %+v", a)
	}
	if q, inflight, waiting, _ := p.state(); q != 0 || inflight != 0 || waiting != 0 {
		t.Errorf("after the expiry: %d queued, %d in flight, %d waiting", q, inflight, waiting)
	}
}

// With real JetStream: a message is stored and acked with its sequence, a
// duplicate with the original's; one to a subject no stream takes is told
// so; a waiter still waiting when the connection is lost is told at once.
func TestJetStream(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	p := New(nc, Options{})
	for i, tc := range []struct {
		msg  int
		want Ack
	}{{0, Ack{Seq: 1}}, {0, Ack{Seq: 1, Duplicate: true}}, {1, Ack{Seq: 2}}} {
		r := make(result, 1)
		if _, err := p.Publish(effectMsg(tc.msg), r); err != nil {
			t.Fatal(err)
		}
		if a := r.wait(t); a.err != nil || a.ack != tc.want {
			t.Errorf("publish %d: %+v, want %+v", i, a, tc.want)
		}
	}
	r := make(result, 1)
	if _, err := p.Publish(nats.NewMsg("nostream.x"), r); err != nil {
		t.Fatal(err)
	}
	if a := r.wait(t); !errors.Is(a.err, jetstream.ErrNoStreamResponse) {
		t.Errorf("no stream: %+v", a)
	}

	// Something takes the subject, nothing stores it: no ack comes.
	if _, err := nc.Subscribe("nothing.>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	r = make(result, 1)
	if _, err := p.Publish(nats.NewMsg("nothing.x"), r); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the message in flight", func() bool { _, inflight, _, _ := p.state(); return inflight == 1 })
	n.Shutdown()
	if a := r.wait(t); !errors.Is(a.err, ErrDisconnected) {
		t.Errorf("at the disconnect: %+v", a)
	}
}

// Close tells the waiters and ends the watcher; a publish after it
// subscribes again.
func TestClose(t *testing.T) {
	t.Parallel()
	p, stream := startFake(t)
	r := make(result, 1)
	if _, err := p.Publish(effectMsg(1), r); err != nil {
		t.Fatal(err)
	}
	stream.receive(t)
	p.Close()
	if a := r.wait(t); !errors.Is(a.err, ErrDisconnected) {
		t.Fatalf("at Close: %+v", a)
	}
	r = make(result, 1)
	if _, err := p.Publish(effectMsg(2), r); err != nil {
		t.Fatal(err)
	}
	stream.ack(t, stream.receive(t))
	if a := r.wait(t); a.err != nil {
		t.Fatalf("after Close: %+v", a)
	}
	p.Close()
}

func TestParsePubAck(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Ack
		err  string
	}{
		{`{"stream":"EFFECTS","seq":12}`, Ack{Seq: 12}, ""},
		{`{"stream":"EFFECTS", "domain":"hub", "seq":12,"duplicate":true}`, Ack{Seq: 12, Duplicate: true}, ""},
		{`{"stream":"EFFECTS","seq":7,"duplicate":false}`, Ack{Seq: 7}, ""},
		{`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"EFFECTS","seq":0}`,
			Ack{}, "nats: API error: code=503 err_code=10077 description=maximum messages exceeded"},
		{`{"seq":3}`, Ack{}, jetstream.ErrInvalidJSAck.Error()},
		{`not json`, Ack{}, jetstream.ErrInvalidJSAck.Error()},
		{`{"stream":"E\u0046","seq":3}`, Ack{Seq: 3}, ""},
	} {
		got, err := ParsePubAck([]byte(tc.in))
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
