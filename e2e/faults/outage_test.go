//go:build faults

package faults

import (
	"fmt"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/faulttest"
)

const outage = 3 * time.Second

// NATS stopped and started again on the same store and port while Hasura
// delivers: the ingest answers 503 with Retry-After while it is
// disconnected, the driver waits that long and retries, and every service
// reconnects by itself. An ack lost in the restart makes JetStream deliver
// again after the ack wait, so a handler whose completion was stored but
// whose ack was lost runs twice (at most the handlers in flight); the
// completion's message id keeps the row written once.
func TestNATSStoppedAndRestarted(t *testing.T) {
	st := start(t, setup{source: "webhook", target: faulttest.TargetConfig{Delay: 50 * time.Millisecond}})
	const n = 2000
	ids, rows := st.insert(n)
	delivered := st.deliverInBackground(events(rows), 32)
	st.waitUntil(30*time.Second, "deliveries taken", func() bool { return st.driver.Stats().OK.Load() >= n/3 })
	st.nats.Shutdown()
	okAtStop := st.driver.Stats().OK.Load()
	time.Sleep(outage)
	st.nats.Start(t)
	restarted := time.Now()
	if err := <-delivered; err != nil {
		t.Fatal(err)
	}
	heal := st.waitFinal(ids, restarted)
	s := st.driver.Stats()
	t.Logf("driver: %d posts, %d 503s (%d waited Retry-After), %d connection errors", s.Posts.Load(), s.Unavailable.Load(), s.RetryAfterHonoured.Load(), s.ConnErrors.Load())
	if s.Unavailable.Load() == 0 || s.RetryAfterHonoured.Load() == 0 {
		t.Error("no delivery was answered 503 with Retry-After during the outage")
	}
	st.verify(faulttest.Result{
		Fault:           "NATS stopped and restarted (same store, same port)",
		Injection:       fmt.Sprintf("server shut down after %d of %d events taken, started again %s later; %d deliveries answered 503 and retried after Retry-After", okAtStop, n, outage, s.Unavailable.Load()),
		RunTwiceAllowed: "allowed: ≤ handlers in flight whose ack was lost",
		Heal:            heal,
	}, ids, nil, concurrency)
}

// PostgreSQL stopped (fast shutdown: connections cut) and started again
// while the table source reads rows and the completer writes: the table
// source's claims roll back and are published again with the same message
// id; the completer retries its batch without acking. No handler runs
// twice.
func TestPostgresStoppedAndRestarted(t *testing.T) {
	st := start(t, setup{source: "table", pgCluster: true})
	const n = 3000
	inserted := st.insertOverTime(n, 150, 50*time.Millisecond)
	st.waitUntil(30*time.Second, "completions being written", func() bool { return st.finalInTable() >= 500 })
	writtenAtStop := st.finalInTable()
	st.pgc.Stop(t)
	time.Sleep(outage)
	st.pgc.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	st.verify(faulttest.Result{
		Fault:     "PostgreSQL stopped and restarted",
		Injection: fmt.Sprintf("pg_ctl stop -m fast after %d rows written (table source, rows still being inserted), started %s later", writtenAtStop, outage),
		Heal:      heal,
	}, ids, nil, 0)
}

// Both at once: NATS and PostgreSQL down together, then back together.
func TestNATSAndPostgresStoppedTogether(t *testing.T) {
	st := start(t, setup{source: "table", pgCluster: true, target: faulttest.TargetConfig{Delay: 50 * time.Millisecond}})
	const n = 3000
	inserted := st.insertOverTime(n, 150, 50*time.Millisecond)
	st.waitUntil(30*time.Second, "completions being written", func() bool { return st.finalInTable() >= 500 })
	writtenAtStop := st.finalInTable()
	st.nats.Shutdown()
	st.pgc.Stop(t)
	time.Sleep(outage)
	st.pgc.Start(t)
	st.nats.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	st.verify(faulttest.Result{
		Fault:           "NATS and PostgreSQL stopped together",
		Injection:       fmt.Sprintf("both stopped after %d rows written (table source), started %s later", writtenAtStop, outage),
		RunTwiceAllowed: "allowed: ≤ handlers in flight whose ack was lost",
		Heal:            heal,
	}, ids, nil, concurrency)
}
