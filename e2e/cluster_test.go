package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/faulttest"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// clusterOptions configures [startReplicas].
type clusterOptions struct {
	registry *effects.Registry
	// replicas of each service (ingest table source, dispatcher,
	// completer); default 2.
	replicas   int
	dispatcher dispatcher.Config
	// streamReplicas is EFFECTS_STREAM_REPLICAS for every service.
	streamReplicas   int
	completerAckWait time.Duration
	// webhook also starts that many replicas of the webhook ingest.
	webhooks int
	// noAudit leaves out the completion audit trigger (benchmarks).
	noAudit bool
}

// replicaSet is several replicas of each service, each with its own NATS
// connection naming every node of the cluster (NATS_URL with three URLs), as
// a deployment with replicas: 2 would run them.
type replicaSet struct {
	t           testing.TB
	pg          *testenv.Postgres
	sources     []*ingest.TableSource
	webhooks    []*ingest.Server
	webhookURLs []string
	dispatchers []*dispatcher.Dispatcher
	completers  []*completer.Completer
	// dispatcherRegs and completerRegs are each replica's metrics.
	dispatcherRegs []*prometheus.Registry
	completerRegs  []*prometheus.Registry
	conns          []*nats.Conn
}

func startReplicas(t testing.TB, natsURL string, o clusterOptions) *replicaSet {
	t.Helper()
	if o.replicas == 0 {
		o.replicas = 2
	}
	streams := effects.StreamOptions{Replicas: o.streamReplicas}.WithDefaults()
	o.dispatcher.Streams = streams
	rs := &replicaSet{t: t, pg: testenv.StartMigrated(t)}
	ctx, cancel := context.WithCancel(context.Background())
	log := logger()

	// Every completion write is recorded, to count rows written twice.
	if !o.noAudit {
		if err := faulttest.InstallAudit(ctx, rs.pg.Pool, "effects"); err != nil {
			t.Fatal(err)
		}
	}

	connect := func(name string) jetstream.JetStream {
		nc, js, err := natsconn.Connect(natsURL, name, log, 0)
		if err != nil {
			t.Fatal(err)
		}
		rs.conns = append(rs.conns, nc)
		return js
	}
	// `completer migrate streams` runs first in a deployment.
	if err := effects.ApplyStreams(ctx, connect("e2e-migrate"), streams); err != nil {
		t.Fatal(err)
	}

	var stops []chan struct{}
	run := func(name string, f func(context.Context) error) {
		done := make(chan struct{})
		stops = append(stops, done)
		go func() {
			defer close(done)
			if err := f(ctx); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
	}
	var pools []interface{ Close() }
	for i := range o.replicas {
		tcfg := ingest.TableConfig{DatabaseURL: rs.pg.URL, Table: "effects", Streams: streams}
		pool, err := ingest.OpenTablePool(tcfg)
		if err != nil {
			t.Fatal(err)
		}
		pools = append(pools, pool)
		src, err := ingest.NewTableSource(tcfg, pool, connect(fmt.Sprintf("e2e-table-%d", i)),
			log.With("service", "ingest", "replica", i), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		rs.sources = append(rs.sources, src)
		run("table source", src.Run)
	}
	for i := range o.webhooks {
		icfg := ingest.Config{WebhookSecret: secret, Streams: streams}.WithDefaults()
		ing, err := ingest.New(icfg, connect(fmt.Sprintf("e2e-ingest-%d", i)), log.With("service", "ingest", "replica", i), prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rs.webhooks = append(rs.webhooks, ing)
		rs.webhookURLs = append(rs.webhookURLs, "http://"+ln.Addr().String()+"/hasura/events")
		run("ingest", func(ctx context.Context) error { return ing.Serve(ctx, ln) })
	}
	for i := range o.replicas {
		reg := prometheus.NewRegistry()
		d, err := dispatcher.New(o.dispatcher, o.registry, connect(fmt.Sprintf("e2e-dispatcher-%d", i)),
			log.With("service", "dispatcher", "replica", i), reg)
		if err != nil {
			t.Fatal(err)
		}
		rs.dispatchers = append(rs.dispatchers, d)
		rs.dispatcherRegs = append(rs.dispatcherRegs, reg)
		run("dispatcher", d.Run)
	}
	for i := range o.replicas {
		reg := prometheus.NewRegistry()
		ccfg := completer.Config{DatabaseURL: rs.pg.URL, Table: "effects", AckWait: o.completerAckWait, Streams: streams}.WithDefaults()
		c, err := completer.New(ccfg, rs.pg.Pool, connect(fmt.Sprintf("e2e-completer-%d", i)),
			log.With("service", "completer", "replica", i), reg)
		if err != nil {
			t.Fatal(err)
		}
		rs.completers = append(rs.completers, c)
		rs.completerRegs = append(rs.completerRegs, reg)
		run("completer", c.Run)
	}
	t.Cleanup(func() {
		cancel()
		for _, s := range stops {
			<-s
		}
		for _, p := range pools {
			p.Close()
		}
		for _, nc := range rs.conns {
			nc.Close()
		}
	})
	rs.waitReady(60 * time.Second)
	return rs
}

// ready reports which service is not ready, or "".
func (rs *replicaSet) notReady(ctx context.Context) string {
	for i, s := range rs.sources {
		if err := s.Ready(ctx); err != nil {
			return fmt.Sprintf("table source %d: %v", i, err)
		}
	}
	for i, s := range rs.webhooks {
		if err := s.Ready(ctx); err != nil {
			return fmt.Sprintf("webhook %d: %v", i, err)
		}
	}
	for i, d := range rs.dispatchers {
		if err := d.Ready(ctx); err != nil {
			return fmt.Sprintf("dispatcher %d: %v", i, err)
		}
	}
	for i, c := range rs.completers {
		if err := c.CheckConsuming(ctx); err != nil {
			return fmt.Sprintf("completer %d: %v", i, err)
		}
	}
	return ""
}

func (rs *replicaSet) waitReady(within time.Duration) {
	rs.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		why := rs.notReady(ctx)
		cancel()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			rs.t.Fatalf("services not ready in %s: %s", within, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// insertRows inserts n rows of kind in one statement.
func (rs *replicaSet) insertRows(kind string, from, n int) {
	rs.t.Helper()
	if _, err := rs.pg.Pool.Exec(context.Background(),
		`INSERT INTO effects (kind, payload) SELECT $1, jsonb_build_object('i', g) FROM generate_series($2::int, $3::int) g`,
		kind, from, from+n-1); err != nil {
		rs.t.Fatal(err)
	}
}

// statusCounts counts the rows by status.
func (rs *replicaSet) statusCounts() map[string]int {
	rs.t.Helper()
	rows, err := rs.pg.Pool.Query(context.Background(), `SELECT status, count(*) FROM effects GROUP BY status`)
	if err != nil {
		rs.t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			rs.t.Fatal(err)
		}
		out[s] = n
	}
	if err := rows.Err(); err != nil {
		rs.t.Fatal(err)
	}
	return out
}

// waitFinal waits until no row is pending.
func (rs *replicaSet) waitFinal(within time.Duration) {
	rs.t.Helper()
	deadline := time.Now().Add(within)
	for {
		c := rs.statusCounts()
		if c[string(effects.StatusPending)] == 0 {
			return
		}
		if time.Now().After(deadline) {
			rs.t.Fatalf("rows still pending after %s: %v", within, c)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// perReplica is testenv.MetricValue for each registry.
func perReplica(t testing.TB, regs []*prometheus.Registry, name string) []float64 {
	out := make([]float64, len(regs))
	for i, reg := range regs {
		out[i] = testenv.MetricValue(t, reg, name)
	}
	return out
}

// allNonZero says whether every value is above zero.
func allNonZero(vs []float64) bool {
	for _, v := range vs {
		if v <= 0 {
			return false
		}
	}
	return true
}

// runCounter counts the runs of a handler per effect: the side effect.
type runCounter struct {
	mu   sync.Mutex
	runs map[string]int
}

func newRunCounter() *runCounter { return &runCounter{runs: map[string]int{}} }

func (c *runCounter) handle(_ context.Context, e effects.Effect) (any, error) {
	c.mu.Lock()
	c.runs[e.ID]++
	c.mu.Unlock()
	return "done", nil
}

// count is how many times the effect ran.
func (c *runCounter) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[id]
}

// checkReplicated fails unless both streams and the services' durable
// consumers have replicas on three nodes.
func checkReplicated(t *testing.T, js jetstream.JetStream, kind string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{effects.EffectsStream, effects.CompletedStream} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info := s.CachedInfo()
		if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("stream %s: replicas %d, cluster %+v; want R3", name, info.Config.Replicas, info.Cluster)
		}
		consumer := completer.ConsumerName
		if name == effects.EffectsStream {
			consumer = "dispatcher-" + kind
		}
		ci, err := s.Consumer(ctx, consumer)
		if err != nil {
			t.Fatal(err)
		}
		if info := ci.CachedInfo(); info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("consumer %s of %s: cluster %+v; want 3 replicas", consumer, name, info.Cluster)
		}
	}
}

// allIDs returns the ids of every row.
func (rs *replicaSet) allIDs() []string {
	rs.t.Helper()
	rows, err := rs.pg.Pool.Query(context.Background(), `SELECT id::text FROM effects`)
	if err != nil {
		rs.t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		rs.t.Fatal(err)
	}
	return ids
}

// verify reads every row back: final, written once, and run as runs says.
func (rs *replicaSet) verify(runs faulttest.Runs) faulttest.Report {
	rs.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := faulttest.Verify(ctx, rs.pg.Pool, "effects", rs.allIDs(), faulttest.VerifyOptions{Runs: runs})
	if err != nil {
		rs.t.Fatal(err)
	}
	return rep
}

// TestClusterReplicasShareWork runs two replicas of each service against a
// 3-node cluster with R3 streams, without faults: every effect is handled
// once and its row written once, and both replicas of the dispatcher and of
// the completer take part.
func TestClusterReplicasShareWork(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3)
	runs := newRunCounter()
	reg := effects.NewRegistry()
	reg.Handle("work", runs.handle)
	rs := startReplicas(t, c.URLs(), clusterOptions{registry: reg, streamReplicas: 3,
		dispatcher: dispatcher.Config{Concurrency: 16}})
	_, js := c.Connect(t)

	// At least 2,000 rows, 100 every 20 ms, and on until both replicas of
	// each service have taken part (a replica that starts pulling late on
	// a loaded machine would otherwise find the work already taken), at
	// most 20,000.
	n := 0
	for n < 2000 || !allNonZero(perReplica(t, rs.dispatcherRegs, "effects_handled_total")) ||
		!allNonZero(perReplica(t, rs.completerRegs, "effects_completions_written_total")) {
		if n >= 20000 {
			break // the assertions below say which replica sat idle
		}
		rs.insertRows("work", n, 100)
		n += 100
		time.Sleep(20 * time.Millisecond)
	}
	rs.waitFinal(2 * time.Minute)
	checkReplicated(t, js, "work")

	rep := rs.verify(runs.count)
	if rep.Sent != n || !rep.OK() || len(rep.RunTwice) != 0 || rep.Statuses["succeeded"] != n {
		t.Errorf("without faults, want every effect run once and written once: %s", rep)
	}
	handled := perReplica(t, rs.dispatcherRegs, "effects_handled_total")
	written := perReplica(t, rs.completerRegs, "effects_completions_written_total")
	t.Logf("effects handled per dispatcher replica %v, rows written per completer replica %v", handled, written)
	for i := range handled {
		if handled[i] == 0 {
			t.Errorf("dispatcher replica %d handled nothing: %v", i, handled)
		}
		if written[i] == 0 {
			t.Errorf("completer replica %d wrote nothing: %v", i, written)
		}
	}
}

// TestClusterStreamLeaderKilled runs two replicas of each service (the
// webhook ingest and the table source, dispatcher, completer) against a
// 3-node cluster with R3 streams; every client names all three nodes. It
// kills the node leading the EFFECTS stream while effects are arriving and
// being handled, starts it again on its store, and checks every row: none
// lost, none written twice, and side effects repeated only for effects in
// flight at the kill. No service is restarted.
func TestClusterStreamLeaderKilled(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3)
	target := faulttest.StartTarget(t, faulttest.TargetConfig{Delay: 100 * time.Millisecond})
	reg := effects.NewRegistry()
	httpRequest, err := handlers.NewHTTPRequest(handlers.HTTPConfig{Allow: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	reg.Handle("http_request", httpRequest)
	// An effect whose delivery or ack was lost with the node comes back
	// after the ack wait, so it is the least the dispatcher accepts.
	const concurrency = 32
	handlerTimeout := 2 * time.Second
	rs := startReplicas(t, c.URLs(), clusterOptions{registry: reg, streamReplicas: 3, webhooks: 2, completerAckWait: 5 * time.Second,
		dispatcher: dispatcher.Config{Concurrency: concurrency, HandlerTimeout: handlerTimeout, AckWait: handlerTimeout + dispatcher.AckWaitMargin,
			RetryBase: 50 * time.Millisecond, RetryMax: time.Second}})
	_, js := c.Connect(t)
	checkReplicated(t, js, "http_request")
	payload := fmt.Sprintf(`{"url": %q, "method": "POST", "body": {"from": "cluster"}}`, target.URL+"/work")

	// Rows arrive both ways: half are read by the table sources, half are
	// marked published (the table sources leave them) and delivered to
	// the two webhook ingests like Hasura does, alternately. About 200
	// rows/s, from before the kill until the node is back.
	const ticks, perTick = 600, 20
	drivers := []*faulttest.Driver{
		{URL: rs.webhookURLs[0], Secret: secret, Interval: 200 * time.Millisecond},
		{URL: rs.webhookURLs[1], Secret: secret, Interval: 200 * time.Millisecond},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	events := make(chan faulttest.Event, ticks*perTick)
	var posters sync.WaitGroup
	for i := range 32 {
		posters.Go(func() {
			for ev := range events {
				if code, err := drivers[i%2].Deliver(ctx, ev); err != nil || code != 200 {
					t.Errorf("delivery of %s: %d, %v", ev.ID, code, err)
				}
			}
		})
	}
	var ticked atomic.Int64
	produced, stop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(produced)
		defer close(events)
		for range ticks {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := rs.pg.Pool.Exec(ctx, `INSERT INTO effects (kind, payload)
				SELECT 'http_request', $1::jsonb FROM generate_series(1, $2)`, payload, perTick/2); err != nil {
				t.Error(err)
				return
			}
			rows, err := rs.pg.Pool.Query(ctx, `INSERT INTO effects (kind, payload, published_at)
				SELECT 'http_request', $1::jsonb, '-infinity' FROM generate_series(1, $2)
				RETURNING row_to_json(effects)::text`, payload, perTick/2)
			if err != nil {
				t.Error(err)
				return
			}
			raws, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
			if err != nil {
				t.Error(err)
				return
			}
			for _, raw := range raws {
				events <- faulttest.NewEvent("INSERT", raw)
			}
			ticked.Add(1)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	for ticked.Load() < 50 {
		time.Sleep(10 * time.Millisecond)
	}
	leader := c.StreamLeader(t, js, effects.EffectsStream, 10*time.Second)
	completedLeader := c.StreamLeader(t, js, effects.CompletedStream, 10*time.Second)
	t.Logf("consumer leaders before the kill: %s", consumerLeaders(t, js))
	inFlight := target.InFlight()
	killedAt := time.Now()
	c.Kill(leader)
	t.Logf("killed %s, leader of %s (%s leads %s), %d calls in flight",
		leader.Name, effects.EffectsStream, completedLeader.Name, effects.CompletedStream, inFlight)
	newLeader := c.StreamLeader(t, js, effects.EffectsStream, 30*time.Second)
	t.Logf("%s leads %s %s after the kill", newLeader.Name, effects.EffectsStream, time.Since(killedAt).Round(time.Millisecond))
	time.Sleep(5 * time.Second)
	c.Restart(t, leader)
	back := time.Now()
	close(stop)
	c.WaitHealthy(t, time.Minute)
	t.Logf("%s back %s after the kill, caught up after %s", leader.Name,
		back.Sub(killedAt).Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))
	<-produced
	posters.Wait()

	rs.waitFinal(2 * time.Minute)
	heal := time.Since(back)
	rep := rs.verify(target.Done)
	if rep.Sent != int(ticked.Load())*perTick || !rep.OK() {
		t.Errorf("want every row final, written once and run: %s", rep)
	}
	// A side effect may be repeated only for an effect whose ack was lost:
	// sent to the node that went, or while the consumer had no leader (an
	// ack is a plain publish, not retried). JetStream delivers it again
	// after the ack wait. At most what the dispatchers hold at once: per
	// replica, the workers and a pull buffer as large, refilled while
	// acks are lost (the election takes about a second).
	if limit := 2 * 2 * concurrency; len(rep.RunTwice) > limit {
		t.Errorf("%d effects ran twice, more than the %d the dispatchers can hold: %s", len(rep.RunTwice), limit, rep)
	}
	// The services were never restarted: every replica is ready again.
	rs.waitReady(30 * time.Second)
	var slowest float64
	if err := rs.pg.Pool.QueryRow(ctx, `SELECT extract(epoch FROM max(completed_at - created_at)) FROM effects`).Scan(&slowest); err != nil {
		t.Fatal(err)
	}
	for i, d := range drivers {
		st := d.Stats()
		t.Logf("webhook replica %d: %d posts, %d answered 503 (%d waited Retry-After), %d connection errors",
			i, st.Posts.Load(), st.Unavailable.Load(), st.RetryAfterHonoured.Load(), st.ConnErrors.Load())
	}
	t.Logf("slowest row: %.1fs from insert to final", slowest)
	if testing.Verbose() {
		rows, err := rs.pg.Pool.Query(ctx, `SELECT (published_at = '-infinity')::text, attempts,
			extract(epoch FROM created_at - $1::timestamptz), extract(epoch FROM completed_at - created_at), count(*)
			FROM effects WHERE completed_at - created_at > interval '5s'
			GROUP BY 1, 2, 3, 4 ORDER BY 3 LIMIT 40`, killedAt)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var webhook string
			var attempts, n int
			var created, latency float64
			if err := rows.Scan(&webhook, &attempts, &created, &latency, &n); err != nil {
				t.Fatal(err)
			}
			t.Logf("slow: webhook %s attempts %d created %+.1fs from the kill, final after %.1fs (%d rows)", webhook, attempts, created, latency, n)
		}
	}
	faulttest.Record(t, faulttest.Result{
		Fault: "Cluster (3-node, R3): stream leader's node killed",
		Injection: fmt.Sprintf("in-process 3-node cluster, R3 streams, 2 replicas of each service (webhook + table source, dispatcher, completer); "+
			"Shutdown of the EFFECTS leader's node with %d calls in flight, started again on its store 5s later", inFlight),
		RunTwiceAllowed: "allowed: acks lost with the node or during the consumer leader election",
		Heal:            heal,
	}.FromReport(rep))
}

// consumerLeaders names the leader of each durable consumer of both streams.
func consumerLeaders(t *testing.T, js jetstream.JetStream) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []string
	for _, name := range []string{effects.EffectsStream, effects.CompletedStream} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return err.Error()
		}
		l := s.ListConsumers(ctx)
		for ci := range l.Info() {
			if ci.Cluster != nil {
				out = append(out, ci.Name+"="+ci.Cluster.Leader)
			}
		}
		if err := l.Err(); err != nil {
			out = append(out, err.Error())
		}
	}
	return strings.Join(out, " ")
}
