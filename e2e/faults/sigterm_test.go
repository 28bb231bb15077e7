//go:build faults

package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/faulttest"
)

// exitWithin is how long after SIGTERM a service must have exited: its
// shutdown timeout, and a margin for a loaded machine.
const exitWithin = shutdownTimeout + 5*time.Second

func checkExit(t *testing.T, svc *faulttest.Service, code int, took time.Duration) {
	t.Helper()
	if code != 0 {
		t.Errorf("%s exited %d after SIGTERM, want 0", svc.Name, code)
	}
	if took > exitWithin {
		t.Errorf("%s took %s to exit after SIGTERM, want at most %s", svc.Name, took, exitWithin)
	}
}

// rowsAttemptedMoreThanOnce counts rows of ids whose attempts column is
// above 1 or that hold an error: an attempt counted as failed.
func (st *stack) rowsAttemptedMoreThanOnce(ids []string) (more, withError int) {
	st.t.Helper()
	err := st.db.QueryRow(context.Background(), `
SELECT count(*) FILTER (WHERE attempts > 1), count(*) FILTER (WHERE error IS NOT NULL)
  FROM effects WHERE id = ANY($1::uuid[])`, ids).Scan(&more, &withError)
	if err != nil {
		st.t.Fatal(err)
	}
	return more, withError
}

// A dispatcher stopped with SIGTERM under load stops pulling, lets its
// running handlers finish (they take 300ms, the shutdown timeout is 10s),
// publishes their completions and exits 0. Nothing runs twice and no
// attempt fails.
func TestSIGTERMDispatcherUnderLoad(t *testing.T) {
	st := start(t, setup{source: "table", target: faulttest.TargetConfig{Delay: 300 * time.Millisecond}})
	const n = 2000
	inserted := st.insertOverTime(n, 200, 100*time.Millisecond)
	st.waitUntil(30*time.Second, "handlers in flight", func() bool { return st.target.InFlight() >= concurrency/2 })
	inFlight, callsAtSignal := st.target.InFlight(), st.target.Calls()
	code, took := st.dispatcher.Term(t)
	callsAtExit := st.target.Calls()
	checkExit(t, st.dispatcher, code, took)
	if st.dispatcher.Process().HasLog("interrupting handlers still running after the shutdown timeout") {
		t.Error("handlers were interrupted: they take 300ms, the shutdown timeout is 10s")
	}
	st.dispatcher.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	more, withError := st.rowsAttemptedMoreThanOnce(ids)
	m := st.dispatcher.Metrics(t)
	failed := faulttest.MetricValue(m, `effects_handled_total{kind="http_request",outcome="failed"}`)
	retried := faulttest.MetricValue(m, `effects_handled_total{kind="http_request",outcome="retried"}`)
	t.Logf("SIGTERM with %d calls in flight: exit %d after %s, %d calls arrived after the signal (running or pulled ahead); rows attempted more than once %d, with an error %d; restarted dispatcher: failed %v, retried %v",
		inFlight, code, took, callsAtExit-callsAtSignal, more, withError, failed, retried)
	if withError != 0 || failed != 0 || retried != 0 {
		t.Errorf("attempts counted as failed: %d rows with an error, %v failed and %v retried deliveries", withError, failed, retried)
	}
	if more != 0 {
		t.Errorf("%d rows count more than one attempt, though each ran once", more)
	}
	st.verify(faulttest.Result{
		Fault:     "SIGTERM to the dispatcher under load",
		Injection: fmt.Sprintf("SIGTERM with %d calls in flight; exit %d after %s; restarted", inFlight, code, took.Round(10*time.Millisecond)),
		Heal:      heal,
	}, ids, nil, 0)
}

// A completer stopped with SIGTERM while it writes: it stops pulling,
// writes what it holds, naks the rest and exits 0; the restarted one writes
// the rest. No row is written twice.
func TestSIGTERMCompleterUnderLoad(t *testing.T) {
	st := start(t, setup{source: "table"})
	const n = 3000
	inserted := st.insertOverTime(n, 300, 50*time.Millisecond)
	st.waitUntil(30*time.Second, "completions being written", func() bool { return st.finalInTable() >= 500 })
	written := st.finalInTable()
	code, took := st.completer.Term(t)
	checkExit(t, st.completer, code, took)
	st.completer.Start(t)
	restarted := time.Now()
	ids := <-inserted
	heal := st.waitFinal(ids, restarted)
	more, withError := st.rowsAttemptedMoreThanOnce(ids)
	if more != 0 || withError != 0 {
		t.Errorf("rows attempted more than once %d, with an error %d", more, withError)
	}
	st.verify(faulttest.Result{
		Fault:     "SIGTERM to the completer under load",
		Injection: fmt.Sprintf("SIGTERM after %d rows written; exit %d after %s; restarted", written, code, took.Round(10*time.Millisecond)),
		Heal:      heal,
	}, ids, nil, 0)
}

// An ingest stopped with SIGTERM while Hasura delivers: it stops
// accepting, answers what it is publishing (cutting what is left at the
// timeout, which Hasura retries) and exits 0; the driver's retries reach
// the restarted ingest.
func TestSIGTERMIngestUnderLoad(t *testing.T) {
	st := start(t, setup{source: "webhook"})
	const n = 2000
	ids, rows := st.insert(n)
	delivered := st.deliverInBackground(events(rows), 32)
	st.waitUntil(30*time.Second, "deliveries taken", func() bool { return st.driver.Stats().OK.Load() >= n/3 })
	ok := st.driver.Stats().OK.Load()
	code, took := st.ingest.Term(t)
	checkExit(t, st.ingest, code, took)
	st.ingest.Start(t)
	restarted := time.Now()
	if err := <-delivered; err != nil {
		t.Fatal(err)
	}
	heal := st.waitFinal(ids, restarted)
	s := st.driver.Stats()
	t.Logf("driver: %d posts, %d connection errors, %d 503s", s.Posts.Load(), s.ConnErrors.Load(), s.Unavailable.Load())
	more, withError := st.rowsAttemptedMoreThanOnce(ids)
	if more != 0 || withError != 0 {
		t.Errorf("rows attempted more than once %d, with an error %d", more, withError)
	}
	st.verify(faulttest.Result{
		Fault:     "SIGTERM to the ingest under load",
		Injection: fmt.Sprintf("SIGTERM after %d of %d events taken (32 at once); exit %d after %s; restarted; %d deliveries retried", ok, n, code, took.Round(10*time.Millisecond), s.ConnErrors.Load()+s.Unavailable.Load()),
		Heal:      heal,
	}, ids, nil, 0)
}
