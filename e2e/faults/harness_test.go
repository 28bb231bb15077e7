//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/faulttest"
	"github.com/effects-run/effects/internal/testenv"
)

const (
	secret = "faults-shared-secret"
	table  = "effects"
	kind   = "http_request"

	// Settings that keep heal times short. The dispatcher's ack wait is
	// the least it accepts (handler timeout + 15s): what a killed
	// dispatcher held comes back after it.
	handlerTimeout  = 2 * time.Second
	ackWait         = handlerTimeout + 15*time.Second
	completerAck    = 2 * time.Second
	shutdownTimeout = 10 * time.Second
	concurrency     = 64

	// healWithin bounds every wait for the rows to become final.
	healWithin = 90 * time.Second
)

// setup says what a test runs.
type setup struct {
	// source is the ingest's EFFECTS_SOURCE: "webhook" (the test posts
	// like Hasura) or "table".
	source string
	// pgCluster runs a private PostgreSQL cluster the test can stop.
	pgCluster bool
	target    faulttest.TargetConfig
	// env adds to or overrides the services' environment.
	ingestEnv, dispatcherEnv, completerEnv map[string]string
}

// stack is one pipeline of real processes.
type stack struct {
	t      *testing.T
	nats   *testenv.NATS
	pgc    *testenv.PGCluster // nil unless setup.pgCluster
	db     *pgxpool.Pool
	dbURL  string
	target *faulttest.Target
	driver *faulttest.Driver
	// runs counts an effect's side effects for verify: target.Done unless
	// a test calls more targets.
	runs faulttest.Runs

	ingest, dispatcher, completer *faulttest.Service
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", testenv.FixedPort(t))
}

func start(t *testing.T, s setup) *stack {
	t.Helper()
	st := &stack{t: t, nats: testenv.StartNATS(t)}
	if s.pgCluster {
		st.pgc = testenv.StartPGCluster(t)
		st.dbURL = st.pgc.URL
		pool, err := pgxpool.New(context.Background(), st.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		st.db = pool
	} else {
		pg := testenv.StartPostgres(t)
		st.dbURL, st.db = pg.URL, pg.Pool
	}
	st.target = faulttest.StartTarget(t, s.target)
	st.runs = st.target.Done

	base := map[string]string{
		"NATS_URL":                 st.nats.URL,
		"EFFECTS_LOG_LEVEL":        "info",
		"EFFECTS_SHUTDOWN_TIMEOUT": shutdownTimeout.String(),
	}
	faulttest.Run(t, bins.Completer, []string{"migrate"}, testenv.MergeEnv(base, map[string]string{"DATABASE_URL": st.dbURL}), nil)
	if err := faulttest.InstallAudit(context.Background(), st.db, table); err != nil {
		t.Fatal(err)
	}

	httpAddr := freeAddr(t)
	st.driver = &faulttest.Driver{URL: "http://" + httpAddr + "/hasura/events", Secret: secret, Interval: 200 * time.Millisecond}
	st.ingest = faulttest.NewService("ingest", bins.Ingest, testenv.MergeEnv(base, map[string]string{
		"EFFECTS_SOURCE":              s.source,
		"EFFECTS_HTTP_ADDR":           httpAddr,
		"EFFECTS_WEBHOOK_SECRET":      secret,
		"DATABASE_URL":                st.dbURL,
		"EFFECTS_RETRY_AFTER":         "1s",
		"EFFECTS_PUBLISH_TIMEOUT":     "2s",
		"EFFECTS_TABLE_POLL_INTERVAL": "200ms",
		"EFFECTS_TABLE_RETRY_MAX":     "1s",
	}, s.ingestEnv))
	if s.source == "webhook" {
		delete(st.ingest.Env, "DATABASE_URL")
	}
	st.dispatcher = faulttest.NewService("dispatcher", bins.Dispatcher, testenv.MergeEnv(base, map[string]string{
		"EFFECTS_HTTP_ALLOW":      "127.0.0.1",
		"EFFECTS_CONCURRENCY":     fmt.Sprint(concurrency),
		"EFFECTS_HANDLER_TIMEOUT": handlerTimeout.String(),
		"EFFECTS_ACK_WAIT":        ackWait.String(),
		"EFFECTS_RETRY_BASE":      "100ms",
		"EFFECTS_RETRY_MAX":       "2s",
	}, s.dispatcherEnv))
	st.completer = faulttest.NewService("completer", bins.Completer, testenv.MergeEnv(base, map[string]string{
		"DATABASE_URL":                st.dbURL,
		"EFFECTS_COMPLETER_ACK_WAIT":  completerAck.String(),
		"EFFECTS_COMPLETER_RETRY_MAX": "1s",
		// Off: the fault tests prove the pipeline loses nothing without
		// the safety net (a re-publish would also hide a loss).
		"EFFECTS_RECONCILE_AFTER": "0",
	}, s.completerEnv))
	for _, svc := range st.services() {
		svc.Start(t)
	}
	for _, svc := range st.services() {
		svc.WaitReady(t)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, svc := range st.services() {
				t.Logf("%s", tail(svc.Output(), 60))
			}
		}
	})
	return st
}

func (st *stack) services() []*faulttest.Service {
	return []*faulttest.Service{st.ingest, st.dispatcher, st.completer}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... %d lines before", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// payload is an http_request effect calling the target.
func (st *stack) payload() string { return payloadFor(st.target) }

func payloadFor(tg *faulttest.Target) string {
	b, _ := json.Marshal(map[string]any{"url": tg.URL + "/work", "method": "POST", "body": map[string]any{"from": "faults"}})
	return string(b)
}

// rowJSON is the row as it is now, as Hasura puts it in an event.
func (st *stack) rowJSON(id string) json.RawMessage {
	st.t.Helper()
	var raw json.RawMessage
	if err := st.db.QueryRow(context.Background(), `SELECT row_to_json(e)::text FROM effects e WHERE id = $1`, id).Scan(&raw); err != nil {
		st.t.Fatal(err)
	}
	return raw
}

// insert adds n rows in one statement and returns their ids and rows (as
// Hasura puts them in an event).
func (st *stack) insert(n int) ([]string, []json.RawMessage) {
	st.t.Helper()
	return st.insertPayload(n, st.payload())
}

// insertPayload is insert with a payload of the caller's.
func (st *stack) insertPayload(n int, payload string) ([]string, []json.RawMessage) {
	st.t.Helper()
	ids, raws, err := st.tryInsertPayload(n, payload)
	if err != nil {
		st.t.Fatal(err)
	}
	return ids, raws
}

func (st *stack) tryInsert(n int) ([]string, []json.RawMessage, error) {
	return st.tryInsertPayload(n, st.payload())
}

func (st *stack) tryInsertPayload(n int, payload string) ([]string, []json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := st.db.Query(ctx, `
INSERT INTO effects (kind, payload) SELECT $1, $2::jsonb FROM generate_series(1, $3)
RETURNING id::text, row_to_json(effects)::text`, kind, payload, n)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var ids []string
	var raws []json.RawMessage
	for rows.Next() {
		var id string
		var raw json.RawMessage
		if err := rows.Scan(&id, &raw); err != nil {
			return nil, nil, err
		}
		ids, raws = append(ids, id), append(raws, raw)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	return ids, raws, nil
}

// insertOverTime inserts total rows in batches of batch every gap, in the
// background, as clients would: a batch that fails (the database is down)
// is tried again. The ids arrive on the channel once all are inserted.
func (st *stack) insertOverTime(total, batch int, gap time.Duration) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		var all []string
		for len(all) < total {
			ids, _, err := st.tryInsert(min(batch, total-len(all)))
			if err != nil {
				// Rolled back, or (a connection lost during the
				// commit) committed unseen: such rows are not
				// counted, and are handled like any other.
				time.Sleep(100 * time.Millisecond)
				continue
			}
			all = append(all, ids...)
			time.Sleep(gap)
		}
		out <- all
	}()
	return out
}

// events builds an INSERT event per row.
func events(rows []json.RawMessage) []faulttest.Event {
	evs := make([]faulttest.Event, len(rows))
	for i, r := range rows {
		evs[i] = faulttest.NewEvent("INSERT", r)
	}
	return evs
}

// waitUntil polls cond every 20ms until it holds, failing after within.
func (st *stack) waitUntil(within time.Duration, what string, cond func() bool) {
	st.t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			st.t.Fatalf("no %s within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// final counts the rows of ids that are final, retrying while the database
// is unreachable (a test may have stopped it).
func (st *stack) final(ids []string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := faulttest.Final(ctx, st.db, table, ids)
	if err != nil {
		return -1
	}
	return n
}

// waitFinal waits until every row of ids is final and returns how long
// that took from since.
func (st *stack) waitFinal(ids []string, since time.Time) time.Duration {
	st.t.Helper()
	deadline := time.Now().Add(healWithin)
	for {
		n := st.final(ids)
		if n == len(ids) {
			return time.Since(since)
		}
		if time.Now().After(deadline) {
			st.t.Fatalf("%d of %d rows final after %s", n, len(ids), healWithin)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// verify reads every row back and records the result; runTwiceMax bounds
// the effects the design lets run twice in this fault (0: none).
func (st *stack) verify(r faulttest.Result, ids []string, reruns map[string]bool, runTwiceMax int) faulttest.Report {
	st.t.Helper()
	// Let late duplicates (a redelivery after the ack wait) arrive before
	// counting: a duplicate that comes after the count would pass unseen.
	time.Sleep(completerAck + time.Second)
	rep, err := faulttest.Verify(context.Background(), st.db, table, ids, faulttest.VerifyOptions{
		Reruns: reruns, Runs: st.runs,
	})
	if err != nil {
		st.t.Fatal(err)
	}
	r = r.FromReport(rep)
	if len(reruns) > 0 {
		// The report leaves out runs a re-run asked for; the result
		// shows them.
		r.RunTwice = 0
		for _, id := range ids {
			if st.runs(id) >= 2 {
				r.RunTwice++
			}
		}
	}
	faulttest.Record(st.t, r)
	if !rep.OK() {
		st.t.Errorf("rows: %s", rep)
	}
	if len(rep.RunTwice) > runTwiceMax {
		st.t.Errorf("%d effects ran twice, the design allows at most %d here: %s", len(rep.RunTwice), runTwiceMax, rep)
	}
	if n := st.target.NoKey(); n != 0 {
		st.t.Errorf("%d calls reached the target without an effect id", n)
	}
	if st.t.Failed() {
		st.t.Logf("report: %s", rep)
	}
	return rep
}

// finalInTable counts every final row of the table (of rows inserted so far).
func (st *stack) finalInTable() int {
	var n int
	if err := st.db.QueryRow(context.Background(), `SELECT count(*) FROM effects WHERE status <> 'pending'`).Scan(&n); err != nil {
		return -1
	}
	return n
}

// deliverInBackground delivers evs like Hasura with workers at once; the
// channel gets the result when all were taken.
func (st *stack) deliverInBackground(evs []faulttest.Event, workers int) <-chan error {
	out := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), healWithin)
		defer cancel()
		out <- st.driver.DeliverAll(ctx, evs, workers)
	}()
	return out
}
