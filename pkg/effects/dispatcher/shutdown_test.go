package dispatcher

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// TestStopEndsWithinTheShutdownTimeout: a handler that ignores its context
// and a completion whose PubAck never arrives share one deadline, the
// shutdown timeout; they do not each wait a timeout of their own (which
// added up to several times it, past an orchestrator's kill). What is left
// at the deadline is unsettled, not acked: JetStream redelivers it.
func TestStopEndsWithinTheShutdownTimeout(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	g := newGatedJS(js)
	stuck := make(chan struct{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	reg.Handle("stuck", func(context.Context, effects.Effect) (any, error) {
		close(stuck)
		<-release // ignores its context
		return nil, nil
	})
	cfg := testConfig()
	cfg.HandlerTimeout = time.Minute
	cfg.ShutdownTimeout = 2 * time.Second
	d, err := New(cfg, reg, js, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	d.PublishThrough(g)
	d.pub = gatedPub{g}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped := make(chan struct{})
	go func() { _ = d.Run(ctx); close(stopped) }()
	for d.Ready(ctx) != nil {
		time.Sleep(5 * time.Millisecond)
	}
	for i, kind := range []string{"echo", "stuck"} {
		msg := nats.NewMsg(effects.Subject(kind))
		msg.Data = fmt.Appendf(nil, `{"id":"00000000-0000-4000-8000-%012d","kind":%q,"payload":{},"created_at":"2026-03-14T09:26:53Z","session_variables":null}`, i, kind)
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("ev-stop-%d", i))
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	<-g.first // echo's completion: its PubAck never comes
	<-stuck

	began := time.Now()
	cancel()
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return")
	}
	took := time.Since(began)
	t.Logf("stop took %s (shutdown timeout %s)", took, cfg.ShutdownTimeout)
	// A correctness bound, not a speed one: before, the phases waited
	// 2s + 6s + 2s.
	if slack := 1500 * time.Millisecond; took > cfg.ShutdownTimeout+slack {
		t.Fatalf("stop took %s, want at most the shutdown timeout %s (+%s)", took, cfg.ShutdownTimeout, slack)
	}
	if got := d.StopDeadline(); got.Before(began) || got.After(began.Add(cfg.ShutdownTimeout+time.Second)) {
		t.Fatalf("StopDeadline %s, the stop began at %s", got, began)
	}
	// The effect whose completion was not acknowledged was not acked.
	cons, err := js.Consumer(context.Background(), effects.EffectsStream, ConsumerName("echo"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 1 || info.AckFloor.Consumer != 0 {
		t.Fatalf("echo's effect settled without its completion's PubAck: %+v", info)
	}
}

func TestCloseWithin(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		deadline time.Time
		want     time.Duration
	}{
		{time.Time{}, 5 * time.Second},
		{now.Add(3 * time.Second), 3 * time.Second},
		{now.Add(-time.Second), 0},
	} {
		if got := closeWithin(c.deadline, now); got != c.want {
			t.Errorf("closeWithin(%v) = %s, want %s", c.deadline, got, c.want)
		}
	}
}
