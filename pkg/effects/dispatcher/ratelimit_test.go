package dispatcher

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// rateRig is a dispatcher with one rate-limited kind ("sms") on a NATS
// server the test can restart, with its log and metrics at hand.
type rateRig struct {
	t    *testing.T
	srv  *testenv.NATS
	js   jetstream.JetStream
	d    *Dispatcher
	reg  *prometheus.Registry
	log  *testenv.SyncBuffer
	runs atomic.Int64
	seq  atomic.Int64
}

func startRateRig(t *testing.T) *rateRig {
	t.Helper()
	r := &rateRig{t: t, srv: testenv.StartNATS(t), reg: prometheus.NewRegistry(), log: &testenv.SyncBuffer{}}
	_, r.js = r.srv.Connect(t)
	if err := effects.EnsureStreams(context.Background(), r.js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	reg.Handle("sms", func(context.Context, effects.Effect) (any, error) {
		r.runs.Add(1)
		return "sent", nil
	})
	cfg := testConfig()
	cfg.KindRate = map[string]effects.Rate{"sms": {N: 100, Per: time.Second}}
	_, djs := r.srv.Connect(t)
	d, err := New(cfg, reg, djs, slog.New(slog.NewJSONHandler(r.log, nil)), r.reg)
	if err != nil {
		t.Fatal(err)
	}
	r.d = d
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		if err := d.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
		close(stopped)
	}()
	t.Cleanup(func() { cancel(); <-stopped })
	testenv.WaitFor(t, 10*time.Second, "dispatcher ready", func() bool { return d.Ready(ctx) == nil })
	return r
}

// publish puts n sms effects on the stream, retrying while the server is
// not back yet.
func (r *rateRig) publish(n int) {
	r.t.Helper()
	for range n {
		msg := nats.NewMsg(effects.Subject("sms"))
		msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":"sms","payload":{}}`, newID())
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprint("ev-sms-", r.seq.Add(1)))
		testenv.WaitFor(r.t, 10*time.Second, "effect published", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := r.js.PublishMsg(ctx, msg)
			return err == nil
		})
	}
}

// ran waits until the handler has run n times in all.
func (r *rateRig) ran(n int64) {
	r.t.Helper()
	testenv.WaitFor(r.t, 15*time.Second, fmt.Sprintf("%d runs of the rate-limited kind", n), func() bool { return r.runs.Load() >= n })
}

func (r *rateRig) metric(name string, labels ...string) float64 {
	return testenv.MetricValue(r.t, r.reg, name, labels...)
}

// Defect 4 of issue 17: the rate-limit bucket is kept in memory, so a
// nats-server restart empties it; the limiter kept reading a bucket that was
// no longer there and the kind stalled for good, silently. It must create the
// bucket again and keep the effects moving.
func TestRateLimitedKindRunsAfterNATSRestart(t *testing.T) {
	t.Parallel()
	r := startRateRig(t)
	r.publish(3)
	r.ran(3)
	r.srv.Restart(t)
	r.publish(5)
	r.ran(8)
	if n := r.metric("effects_dispatcher_rate_bucket_created_total"); n < 1 {
		t.Errorf("bucket re-creations counted: %v", n)
	}
	if !strings.Contains(r.log.String(), "rate-limit bucket "+RateBucket+" was gone; created it again") {
		t.Errorf("no log line about the lost bucket:\n%s", r.log)
	}
	testenv.WaitFor(t, 5*time.Second, "ready", func() bool { return r.d.Ready(context.Background()) == nil })
}

// The same when an operator deletes the bucket by hand.
func TestRateLimitedKindRunsAfterItsBucketIsDeleted(t *testing.T) {
	t.Parallel()
	r := startRateRig(t)
	r.publish(3)
	r.ran(3)
	if err := r.js.DeleteKeyValue(context.Background(), RateBucket); err != nil {
		t.Fatal(err)
	}
	r.publish(5)
	r.ran(8)
	if n := r.metric("effects_dispatcher_rate_bucket_created_total"); n != 1 {
		t.Errorf("bucket re-creations counted: %v, want 1", n)
	}
	if _, err := r.js.KeyValue(context.Background(), RateBucket); err != nil {
		t.Errorf("bucket not there again: %v", err)
	}
}

// A key deleted by hand (`nats kv del EFFECTS_RATE sms`) leaves a delete
// marker; the limiter starts the kind's schedule afresh from it.
func TestRateLimitedKindRunsAfterItsKeyIsDeleted(t *testing.T) {
	t.Parallel()
	r := startRateRig(t)
	r.publish(2)
	r.ran(2)
	kv, err := r.js.KeyValue(context.Background(), RateBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), "sms"); err != nil {
		t.Fatal(err)
	}
	r.publish(3)
	r.ran(5)
}

// A bucket that is there but cannot be written (here: sealed) stalls the
// kind: the dispatcher says so in a log line, a metric and /readyz, and is
// ready again once the state can be written (the bucket deleted: the limiter
// makes a new one).
func TestUnwritableRateStateIsReportedUntilItRecovers(t *testing.T) {
	t.Parallel()
	r := startRateRig(t)
	r.publish(1)
	r.ran(1)
	if got := r.metric("effects_dispatcher_rate_limit_up", "kind", "sms"); got != 1 {
		t.Fatalf("effects_dispatcher_rate_limit_up = %v before the fault, want 1", got)
	}
	ctx := context.Background()
	s, err := r.js.Stream(ctx, "KV_"+RateBucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.Sealed = true
	if _, err := r.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	r.publish(1)
	testenv.WaitFor(t, 10*time.Second, "not ready, naming the kind and the bucket", func() bool {
		err := r.d.Ready(ctx)
		return err != nil && strings.Contains(err.Error(), "kind sms") && strings.Contains(err.Error(), RateBucket)
	})
	if got := r.metric("effects_dispatcher_rate_limit_up", "kind", "sms"); got != 0 {
		t.Errorf("effects_dispatcher_rate_limit_up = %v while the state cannot be written, want 0", got)
	}
	if !strings.Contains(r.log.String(), "rate limit state cannot be read or written") {
		t.Errorf("no log line about the stalled kind:\n%s", r.log)
	}
	if n := r.runs.Load(); n != 1 {
		t.Fatalf("%d runs while the limit could not be taken, want 1", n)
	}
	if err := r.js.DeleteStream(ctx, "KV_"+RateBucket); err != nil {
		t.Fatal(err)
	}
	r.ran(2)
	testenv.WaitFor(t, 10*time.Second, "ready again", func() bool { return r.d.Ready(ctx) == nil })
	if got := r.metric("effects_dispatcher_rate_limit_up", "kind", "sms"); got != 1 {
		t.Errorf("effects_dispatcher_rate_limit_up = %v after recovery, want 1", got)
	}
	if !strings.Contains(r.log.String(), "rate limit state readable again") {
		t.Errorf("no log line about the recovery:\n%s", r.log)
	}
}
