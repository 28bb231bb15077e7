//go:build faults

package faults

import (
	"fmt"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/faulttest"
)

// A dispatcher killed with handlers in flight: what it held (running or
// pulled ahead) comes back after the ack wait to the restarted one. A
// handler whose call the target answered before the kill but whose
// completion was not stored runs again: the one place a kill -9 may run an
// effect twice (at most the handlers in flight). Its completion has the
// same message id, so the row is written once.
func TestKillDispatcherWithHandlersInFlight(t *testing.T) {
	st := start(t, setup{source: "table", target: faulttest.TargetConfig{Delay: 200 * time.Millisecond}})
	const n = 2000
	inserted := st.insertOverTime(n, 200, 100*time.Millisecond)
	st.waitUntil(30*time.Second, "handlers in flight", func() bool { return st.target.InFlight() >= concurrency/2 })
	inFlight := st.target.InFlight()
	st.dispatcher.Kill(t)
	st.dispatcher.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	st.verify(faulttest.Result{
		Fault:           "dispatcher kill -9, many handlers in flight",
		Injection:       fmt.Sprintf("SIGKILL with %d calls in flight (table source, %d workers), restarted at once", inFlight, concurrency),
		RunTwiceAllowed: "allowed: ≤ handlers in flight whose call finished before the kill",
		Heal:            heal,
	}, ids, nil, concurrency)
}

// A completer killed while it writes: nothing was acked that was not
// committed, so what it held is redelivered after its ack wait and the
// rules make rewriting a committed completion a no-op. No handler runs
// again.
func TestKillCompleterMidBatch(t *testing.T) {
	st := start(t, setup{source: "table"})
	const n = 3000
	inserted := st.insertOverTime(n, 300, 50*time.Millisecond)
	st.waitUntil(30*time.Second, "completions being written", func() bool { return st.finalInTable() >= 500 })
	st.completer.Kill(t)
	killedAt := st.finalInTable()
	time.Sleep(time.Second)
	st.completer.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	st.verify(faulttest.Result{
		Fault:     "completer kill -9 mid-batch",
		Injection: fmt.Sprintf("SIGKILL after %d rows written, restarted 1s later", killedAt),
		Heal:      heal,
	}, ids, nil, 0)
}

// An ingest killed while Hasura-style deliveries arrive: a delivery cut
// before its reply is retried by the driver with the same event id, which
// JetStream stores once (duplicate window); the restarted ingest takes the
// rest on the same address.
func TestKillIngestDuringDeliveries(t *testing.T) {
	st := start(t, setup{source: "webhook"})
	const n = 2000
	ids, rows := st.insert(n)
	delivered := st.deliverInBackground(events(rows), 32)
	st.waitUntil(30*time.Second, "deliveries taken", func() bool { return st.driver.Stats().OK.Load() >= n/3 })
	st.ingest.Kill(t)
	okAtKill := st.driver.Stats().OK.Load()
	time.Sleep(500 * time.Millisecond)
	st.ingest.Start(t)
	restarted := time.Now()
	if err := <-delivered; err != nil {
		t.Fatal(err)
	}
	heal := st.waitFinal(ids, restarted)
	s := st.driver.Stats()
	t.Logf("driver: %d posts, %d connection errors, %d 503s", s.Posts.Load(), s.ConnErrors.Load(), s.Unavailable.Load())
	if s.ConnErrors.Load() == 0 {
		t.Error("no delivery met the dead ingest: the kill was not under load")
	}
	st.verify(faulttest.Result{
		Fault:     "ingest kill -9 during Hasura deliveries",
		Injection: fmt.Sprintf("SIGKILL after %d of %d events taken (32 at once), restarted 0.5s later; %d deliveries retried after a connection error", okAtKill, n, s.ConnErrors.Load()),
		Heal:      heal,
	}, ids, nil, 0)
}

// An ingest reading the table killed while it publishes: its cursor stays
// at the last batch acked (its lock goes with its connection), and the
// restarted one (or any other) publishes the batches that were in flight
// again with the same message id (the row id), which JetStream stores once
// within the duplicate window.
func TestKillIngestTableSourceMidClaim(t *testing.T) {
	st := start(t, setup{source: "table", ingestEnv: map[string]string{"EFFECTS_TABLE_BATCH_SIZE": "100"}})
	const n = 3000
	inserted := st.insertOverTime(n, 300, 50*time.Millisecond)
	st.waitUntil(30*time.Second, "rows published", func() bool { return st.finalInTable() >= 300 })
	st.ingest.Kill(t)
	writtenAtKill := st.finalInTable()
	time.Sleep(500 * time.Millisecond)
	st.ingest.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	st.verify(faulttest.Result{
		Fault:     "ingest (table source) kill -9 mid-claim",
		Injection: fmt.Sprintf("SIGKILL after %d rows written, rows still being inserted (batches of 100, 2 workers), restarted 0.5s later", writtenAtKill),
		Heal:      heal,
	}, ids, nil, 0)
}
