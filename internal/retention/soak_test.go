//go:build soak

// The soak measures what the effects table grows to under a sustained rate,
// with retention removing rows as configured: table and index sizes, dead
// rows, HOT updates and whether autovacuum keeps up. It is not part of
// `make test`; run it with `make soak` (flags in SOAKFLAGS, e.g.
// SOAKFLAGS='-soak.duration=3m -soak.rate=2000').
//
// It runs on a private PostgreSQL cluster (autovacuum on, as shipped; the
// shared test database may have it off), with the real completer writing
// completions published to an in-process JetStream, and the real Remover.
package retention_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

var (
	soakDuration  = flag.Duration("soak.duration", 10*time.Minute, "how long to insert and complete at the rate")
	soakRate      = flag.Int("soak.rate", 3000, "effects inserted (and completed) per second")
	soakSucceeded = flag.Duration("soak.retain-succeeded", 2*time.Minute, "EFFECTS_RETAIN_SUCCEEDED (0: keep)")
	soakFailed    = flag.Duration("soak.retain-failed", 4*time.Minute, "EFFECTS_RETAIN_FAILED (0: keep)")
	soakInterval  = flag.Duration("soak.interval", 15*time.Second, "EFFECTS_RETAIN_INTERVAL")
	soakSample    = flag.Duration("soak.sample", 30*time.Second, "time between two samples of the table's statistics")
	soakPlain     = flag.Bool("soak.plain", false, "measure the table as migration 001 left it: no succeeded index, default storage settings")
	soakFill      = flag.Int("soak.fillfactor", 0, "override the table's fillfactor (0: the migration's)")
	soakFailShare = flag.Float64("soak.failed-share", 0.01, "share of effects completed as failed")
)

func TestSoak(t *testing.T) {
	cluster := testenv.StartPGCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool, err := pgxpool.New(ctx, cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Migrate(ctx, conn.Conn(), "effects"); err != nil {
		t.Fatal(err)
	}
	conn.Release()
	mustExec(t, pool, "CREATE EXTENSION IF NOT EXISTS pgstattuple")
	if *soakPlain {
		mustExec(t, pool, `DROP INDEX effects_succeeded_idx;
			ALTER TABLE effects RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor)`)
	}
	if *soakFill > 0 {
		mustExec(t, pool, fmt.Sprintf("ALTER TABLE effects SET (fillfactor = %d)", *soakFill))
	}
	var reloptions string
	_ = pool.QueryRow(ctx, `SELECT coalesce(array_to_string(reloptions, ', '), 'defaults') FROM pg_class WHERE oid = 'effects'::regclass`).Scan(&reloptions)
	t.Logf("rate %d/s for %s; retain succeeded %s, failed %s, every %s; table options: %s; plain=%v",
		*soakRate, *soakDuration, *soakSucceeded, *soakFailed, *soakInterval, reloptions, *soakPlain)

	nats := testenv.StartNATS(t)
	_, js := nats.Connect(t)
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	reg := prometheus.NewRegistry()
	c, err := completer.New(completer.Config{Table: "effects"}, pool, js, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	rm, err := retention.New(retention.Config{
		Table:    "effects",
		Policy:   retention.Policy{Succeeded: *soakSucceeded, Failed: *soakFailed},
		Interval: *soakInterval,
	}, pool, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	runCtx, stopRun := context.WithCancel(ctx)
	wg.Add(2)
	go func() { defer wg.Done(); _ = c.Run(runCtx) }()
	go func() { defer wg.Done(); _ = rm.Run(runCtx) }()

	// Insert a tenth of the rate every 100ms, and publish a completion for
	// every row inserted, as a dispatcher would.
	ids := make(chan []string, 1000)
	var inserted, published atomic.Int64
	loadCtx, stopLoad := context.WithTimeout(ctx, *soakDuration)
	defer stopLoad()
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(ids)
		per := max(1, *soakRate/10)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-tick.C:
			}
			rows, err := pool.Query(ctx, `INSERT INTO effects (kind, payload)
				SELECT 'echo', jsonb_build_object('n', g, 'to', 'someone@example.com', 'subject', 'a message of moderate length')
				  FROM generate_series(1, $1) g RETURNING id::text`, per)
			if err != nil {
				t.Errorf("insert: %v", err)
				return
			}
			batch, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Errorf("insert: %v", err)
				return
			}
			inserted.Add(int64(len(batch)))
			ids <- batch
		}
	}()
	go func() {
		defer wg.Done()
		n := 0
		failEvery := 0
		if *soakFailShare > 0 {
			failEvery = int(1 / *soakFailShare)
		}
		for batch := range ids {
			for _, id := range batch {
				n++
				comp := effects.Completion{EffectID: id, Kind: "echo", Status: effects.StatusSucceeded,
					Completion: json.RawMessage(`{"status":200,"body":{"ok":true}}`), Attempts: 1, CompletedAt: time.Now()}
				if failEvery > 0 && n%failEvery == 0 {
					msg := "permanent: the address was refused"
					comp = effects.Completion{EffectID: id, Kind: "echo", Status: effects.StatusFailed, Error: &msg, Attempts: 3, CompletedAt: time.Now()}
				}
				data, _ := json.Marshal(comp)
				if _, err := js.PublishAsync(effects.CompletedSubject("echo"), data); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				published.Add(1)
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(30 * time.Second):
				t.Error("publish acks not received in 30s")
				return
			}
		}
	}()

	start := time.Now()
	sample := func(final bool) {
		var s stats
		err := pool.QueryRow(ctx, `
			SELECT pg_relation_size(relid), pg_indexes_size(relid), n_live_tup, n_dead_tup,
			       n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, autovacuum_count, autoanalyze_count,
			       (SELECT count(*) FROM effects WHERE status = 'pending')
			  FROM pg_stat_user_tables WHERE relid = 'effects'::regclass`).
			Scan(&s.heap, &s.indexes, &s.live, &s.dead, &s.ins, &s.upd, &s.hot, &s.del, &s.autovacuums, &s.autoanalyzes, &s.pending)
		if err != nil {
			t.Errorf("sample: %v", err)
			return
		}
		rows, _ := pool.Query(ctx, `SELECT indexrelid::regclass::text || '=' || pg_size_pretty(pg_relation_size(indexrelid))
			FROM pg_index WHERE indrelid = 'effects'::regclass ORDER BY 1`)
		idx, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		removed := metric(reg, "effects_retention_removed_total")
		written := metric(reg, "effects_completions_written_total")
		t.Logf("t=%4.0fs ins=%d written=%.0f removed=%.0f pending=%d | heap=%s idx=%s live=%d dead=%d upd=%d hot=%d del=%d autovacuum=%d autoanalyze=%d | %s",
			time.Since(start).Seconds(), s.ins, written, removed, s.pending, mb(s.heap), mb(s.indexes), s.live, s.dead,
			s.upd, s.hot, s.del, s.autovacuums, s.autoanalyzes, strings.Join(idx, " "))
		if final {
			var tableLen int64
			var tuplePct, deadPct, freePct float64
			if err := pool.QueryRow(ctx, `SELECT table_len, tuple_percent, dead_tuple_percent, free_percent FROM pgstattuple('effects')`).
				Scan(&tableLen, &tuplePct, &deadPct, &freePct); err != nil {
				t.Errorf("pgstattuple: %v", err)
				return
			}
			t.Logf("pgstattuple(effects): %s, live tuples %.1f%%, dead tuples %.1f%%, free %.1f%%", mb(tableLen), tuplePct, deadPct, freePct)
			for _, ix := range []string{"effects_pkey", "effects_pending_idx", "effects_failed_idx", "effects_succeeded_idx"} {
				var size int64
				var density, frag float64
				err := pool.QueryRow(ctx, `SELECT index_size, avg_leaf_density, leaf_fragmentation FROM pgstatindex($1)`, ix).Scan(&size, &density, &frag)
				if err != nil {
					continue // the plain schema has no succeeded index
				}
				t.Logf("pgstatindex(%s): %s, leaf density %.1f%%, leaf fragmentation %.1f%%", ix, mb(size), density, frag)
			}
		}
	}
	tick := time.NewTicker(*soakSample)
	sample(false)
loop:
	for {
		select {
		case <-tick.C:
			sample(false)
		case <-loadCtx.Done():
			break loop
		}
	}
	tick.Stop()
	// Let the completer catch up (bounded), then the last sample.
	deadline := time.Now().Add(2 * time.Minute)
	for metric(reg, "effects_completions_written_total") < float64(published.Load()) && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
	}
	elapsed := time.Since(start)
	stopRun()
	wg.Wait()
	t.Logf("inserted %d, completions published %d, written %.0f in %s (%.0f/s); removed %.0f (succeeded %.0f, failed %.0f); passes done %.0f skipped %.0f error %.0f",
		inserted.Load(), published.Load(), metric(reg, "effects_completions_written_total"), elapsed.Round(time.Second),
		float64(inserted.Load())/soakDuration.Seconds(), metric(reg, "effects_retention_removed_total"),
		metric(reg, "effects_retention_removed_total", "succeeded"), metric(reg, "effects_retention_removed_total", "failed"),
		metric(reg, "effects_retention_passes_total", "done"), metric(reg, "effects_retention_passes_total", "skipped"),
		metric(reg, "effects_retention_passes_total", "error"))
	passSeconds := histogramSum(reg, "effects_retention_pass_seconds")
	t.Logf("retention passes took %.1fs in all (%.1f%% of the run), %.0f rows/s while removing",
		passSeconds, 100*passSeconds/elapsed.Seconds(), metric(reg, "effects_retention_removed_total")/passSeconds)
	sample(true)
}

func histogramSum(g prometheus.Gatherer, name string) float64 {
	mfs, _ := g.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetHistogram().GetSampleSum()
			}
			return sum
		}
	}
	return 0
}

type stats struct {
	heap, indexes, live, dead, ins, upd, hot, del, autovacuums, autoanalyzes, pending int64
}

func mb(b int64) string { return fmt.Sprintf("%.1fMB", float64(b)/(1<<20)) }

func mustExec(t *testing.T, pool *pgxpool.Pool, sql string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// metric sums a counter family, or the series whose label value is label.
func metric(g prometheus.Gatherer, name string, label ...string) float64 {
	mfs, _ := g.Gather()
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(label) > 0 && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label[0]) {
				continue
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
