//go:build faults

package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/faulttest"
)

// Hasura delivers the same event twice (a reply lost), several times at
// once (instances racing), out of order (a retried event after newer
// ones; an UPDATE or DELETE event of a row before its INSERT), and again
// after the row is complete. The event id is the message id, so JetStream
// stores each event once within the duplicate window: nothing runs twice.
func TestHasuraDuplicatesConcurrentAndOutOfOrder(t *testing.T) {
	st := start(t, setup{source: "webhook", target: faulttest.TargetConfig{Delay: 20 * time.Millisecond}})
	const n = 2000
	ids, rows := st.insert(n)
	evs := events(rows)
	ctx, cancel := context.WithTimeout(context.Background(), healWithin)
	defer cancel()

	var twice, atOnce, otherOps int
	var jobs []func() error
	for i, ev := range evs {
		switch i % 4 {
		case 0:
			twice++
			jobs = append(jobs, func() error { return st.driver.DeliverTwice(ctx, ev) })
		case 1:
			atOnce++
			jobs = append(jobs, func() error { return st.driver.DeliverConcurrently(ctx, ev, 3) })
		default:
			jobs = append(jobs, func() error { return deliverOnce(ctx, st.driver, ev) })
		}
		if i%10 == 0 {
			// An UPDATE and a DELETE event of the same row, ignored by
			// the ingest, in any order with its INSERT.
			otherOps += 2
			for _, op := range []string{"UPDATE", "DELETE"} {
				other := faulttest.NewEvent(op, rows[i])
				jobs = append(jobs, func() error { return deliverOnce(ctx, st.driver, other) })
			}
		}
	}
	rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	runJobs(t, jobs, 32)
	// A quarter of the events again, after newer ones and mostly after
	// their rows completed: Hasura re-delivering within the window.
	var late []func() error
	for _, ev := range evs[:n/4] {
		late = append(late, func() error { return deliverOnce(ctx, st.driver, ev) })
	}
	rand.Shuffle(len(late), func(i, j int) { late[i], late[j] = late[j], late[i] })
	runJobs(t, late, 32)
	lastDelivery := time.Now()
	heal := st.waitFinal(ids, lastDelivery)
	st.verify(faulttest.Result{
		Fault: "Hasura: same event twice, at once, out of order, late",
		Injection: fmt.Sprintf("%d events: %d delivered twice in a row, %d three times at once, %d UPDATE/DELETE events among them, all shuffled; then %d again",
			n, twice, atOnce, otherOps, n/4),
		Heal: heal,
	}, ids, nil, 0)
}

func deliverOnce(ctx context.Context, d *faulttest.Driver, ev faulttest.Event) error {
	code, err := d.Deliver(ctx, ev)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("event %s: %d", ev.ID, code)
	}
	return err
}

func runJobs(t *testing.T, jobs []func() error, workers int) {
	t.Helper()
	next := make(chan func() error)
	errs := make(chan error, len(jobs))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for job := range next {
				errs <- job()
			}
		})
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A MANUAL re-run (the console's "Invoke", a new event id) of a row whose
// first run is still retrying, and of a row whose first run failed (the
// shape of testdata/manual.json). A MANUAL event is a re-run the operator
// asked for, so it runs again: the one place here where an effect runs
// twice by design. The row is written once when the first run succeeds
// (the second success changes nothing), twice when a failure is replaced
// by the re-run's success.
func TestManualRerunWhileFirstRunRetries(t *testing.T) {
	// Retrying: the target refuses each effect's first 2 calls with 503
	// and Retry-After 1s. Failed: another target refuses the first 3
	// calls, as many as the dispatcher's attempts.
	st := start(t, setup{
		source:        "webhook",
		target:        faulttest.TargetConfig{Fail: 2, RetryAfter: time.Second},
		dispatcherEnv: map[string]string{"EFFECTS_MAX_ATTEMPTS": "3"},
	})
	failing := faulttest.StartTarget(t, faulttest.TargetConfig{Fail: 3})
	st.runs = func(id string) int { return st.target.Done(id) + failing.Done(id) }
	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), healWithin)
	defer cancel()

	retryingIDs, retryingRows := st.insert(n)
	failedIDs, failedRows := st.insertPayload(n, payloadFor(failing))
	if err := st.driver.DeliverAll(ctx, append(events(retryingRows), events(failedRows)...), 32); err != nil {
		t.Fatal(err)
	}
	st.waitUntil(30*time.Second, "every first run refused", func() bool {
		for _, id := range retryingIDs {
			if st.target.Refused(id) == 0 {
				return false
			}
		}
		return true
	})
	st.waitFinal(failedIDs, time.Now())
	var stillRetrying int
	for _, id := range retryingIDs {
		if st.target.Done(id) == 0 {
			stillRetrying++
		}
	}
	var manual []faulttest.Event
	for _, id := range append(append([]string{}, retryingIDs...), failedIDs...) {
		manual = append(manual, faulttest.NewEvent("MANUAL", st.rowJSON(id)))
	}
	if err := st.driver.DeliverAll(ctx, manual, 32); err != nil {
		t.Fatal(err)
	}
	delivered := time.Now()
	all := append(append([]string{}, retryingIDs...), failedIDs...)
	heal := st.waitFinal(all, delivered)
	// Both runs of a retrying row succeed in the end; the failed rows'
	// re-runs succeed (the failing target's refusals are spent).
	st.waitUntil(30*time.Second, "both runs of every retrying row", func() bool {
		for _, id := range retryingIDs {
			if st.target.Done(id) < 2 {
				return false
			}
		}
		return true
	})
	reruns := map[string]bool{}
	for _, id := range all {
		reruns[id] = true
	}
	rep := st.verify(faulttest.Result{
		Fault: "Hasura MANUAL re-run while the first run retries; and of a failed row",
		Injection: fmt.Sprintf("%d rows whose target answers 503 + Retry-After 1s twice get a MANUAL event while %d are still retrying; %d rows failed after 3 attempts get one",
			n, stillRetrying, n),
		RunTwiceAllowed: "by design: a MANUAL event is a re-run asked for",
		Heal:            heal,
	}, all, reruns, 0)
	if rep.Statuses["succeeded"] != 2*n {
		t.Errorf("statuses %v: every row should succeed (the failed ones by their re-run)", rep.Statuses)
	}
	var failedWrites int
	if err := st.db.QueryRow(ctx, `SELECT count(*) FROM effects_completion_audit WHERE id = ANY($1::uuid[]) AND old_status = 'failed' AND new_status = 'succeeded'`, failedIDs).Scan(&failedWrites); err != nil {
		t.Fatal(err)
	}
	if failedWrites != n {
		t.Errorf("%d failed rows replaced by their re-run's success, want %d", failedWrites, n)
	}
}
