//go:build faults

package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/faulttest"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// rateLimited runs the kind under a rate limit shared through the bucket
// EFFECTS_RATE (memory storage): every attempt reads and writes it.
const rateLimit = "300/s"

func rateLimitedSetup() setup {
	return setup{
		source:        "table",
		target:        faulttest.TargetConfig{Delay: 50 * time.Millisecond},
		dispatcherEnv: map[string]string{"EFFECTS_KIND_RATE": kind + "=" + rateLimit},
	}
}

// bucketRecreated checks that the dispatcher said, in its log and its
// metrics, that it created the rate-limit bucket again, and returns how
// often.
func (st *stack) bucketRecreated(t *testing.T) int {
	t.Helper()
	n := faulttest.MetricValue(st.dispatcher.Metrics(t), "effects_dispatcher_rate_bucket_created_total")
	if n < 1 {
		t.Errorf("effects_dispatcher_rate_bucket_created_total = %v, want at least 1", n)
	}
	if !strings.Contains(st.dispatcher.Output(), "rate-limit bucket "+dispatcher.RateBucket+" was gone; created it again") {
		t.Error("the dispatcher did not log the bucket's re-creation")
	}
	return int(n)
}

// NATS stopped and started again while a rate-limited kind runs: the
// memory bucket holding the limit's state is empty afterwards. Before,
// no effect of the kind ran again (100 stayed pending for minutes, nothing
// logged, /readyz 200); the dispatcher now creates the bucket again and goes
// on. Acks lost in the restart make JetStream deliver those effects again
// after the ack wait (at most the handlers in flight run twice), as in
// TestNATSStoppedAndRestarted.
func TestNATSRestartedWithRateLimits(t *testing.T) {
	st := start(t, rateLimitedSetup())
	const n = 1500
	inserted := st.insertOverTime(n, 150, 50*time.Millisecond)
	st.waitUntil(30*time.Second, "completions being written", func() bool { return st.finalInTable() >= 300 })
	writtenAtStop := st.finalInTable()
	st.nats.Shutdown()
	time.Sleep(outage)
	st.nats.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	recreated := st.bucketRecreated(t)
	st.dispatcher.WaitReady(t)
	st.verify(faulttest.Result{
		Fault: "NATS restarted with rate limits on",
		Injection: fmt.Sprintf("EFFECTS_KIND_RATE=%s=%s (bucket %s, memory storage); server shut down after %d rows written (table source), started again on its store %s later; bucket created again %d time(s)",
			kind, rateLimit, dispatcher.RateBucket, writtenAtStop, outage, recreated),
		RunTwiceAllowed: "allowed: ≤ handlers in flight whose ack was lost",
		Heal:            heal,
	}, ids, nil, concurrency)
}

// The rate-limit bucket deleted by hand (`nats kv rm EFFECTS_RATE`) while
// its kind runs: the dispatcher creates it again and the kind goes on. No
// effect message is touched, so none runs twice.
func TestRateLimitBucketDeleted(t *testing.T) {
	st := start(t, rateLimitedSetup())
	const n = 1500
	inserted := st.insertOverTime(n, 150, 50*time.Millisecond)
	st.waitUntil(30*time.Second, "completions being written", func() bool { return st.finalInTable() >= 300 })
	_, js := st.nats.Connect(t)
	writtenAtDelete := st.finalInTable()
	if err := js.DeleteKeyValue(context.Background(), dispatcher.RateBucket); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, deleted)
	recreated := st.bucketRecreated(t)
	st.dispatcher.WaitReady(t)
	st.verify(faulttest.Result{
		Fault: "rate-limit bucket deleted",
		Injection: fmt.Sprintf("EFFECTS_KIND_RATE=%s=%s; bucket %s deleted by hand after %d rows written (table source); created again %d time(s)",
			kind, rateLimit, dispatcher.RateBucket, writtenAtDelete, recreated),
		Heal: heal,
	}, ids, nil, 0)
}
