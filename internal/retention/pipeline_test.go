package retention_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// pipeline is a completer writing into a migrated table, fed by a JetStream
// of the test's own.
type pipeline struct {
	pool *pgxpool.Pool
	js   jetstream.JetStream
	reg  *prometheus.Registry
}

func startPipeline(t *testing.T) *pipeline {
	t.Helper()
	p := &pipeline{pool: migrated(t), reg: prometheus.NewRegistry()}
	n := testenv.StartNATS(t)
	_, p.js = n.Connect(t)
	if err := effects.EnsureStreams(testCtx(t), p.js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := completer.New(completer.Config{Table: "effects", BatchSize: 100}, p.pool, p.js, testLogger(t), p.reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("completer: %v", err)
		}
	})
	return p
}

func (p *pipeline) publish(t testing.TB, comps ...effects.Completion) {
	t.Helper()
	for _, c := range comps {
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.js.PublishAsync(effects.CompletedSubject(c.Kind), data); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-p.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publish acks not received in 30s")
	}
}

// settled waits until the completer has acked every completion published.
func (p *pipeline) settled(t testing.TB) {
	t.Helper()
	testenv.WaitFor(t, 60*time.Second, "every completion settled", func() bool {
		cons, err := p.js.Consumer(testCtx(t), effects.CompletedStream, completer.ConsumerName)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := cons.Info(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		s, err := p.js.Stream(testCtx(t), effects.CompletedStream)
		if err != nil {
			t.Fatal(err)
		}
		return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == s.CachedInfo().State.LastSeq
	})
}

func succeededAt(id string, at time.Time) effects.Completion {
	return effects.Completion{EffectID: id, Kind: "echo", Status: effects.StatusSucceeded,
		Completion: json.RawMessage(`{"ok":true}`), Attempts: 1, CompletedAt: at}
}

func failedAt(id string, at time.Time) effects.Completion {
	msg := "refused"
	return effects.Completion{EffectID: id, Kind: "echo", Status: effects.StatusFailed, Error: &msg, Attempts: 3, CompletedAt: at}
}

func TestLateCompletionForRemovedRowIsDropped(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	ids := insertRows(t, p.pool, rowSpec{"pending", 3 * h, 0}, rowSpec{"pending", 3 * h, 0})
	old := time.Now().Add(-2 * h)
	p.publish(t, succeededAt(ids[0], old), failedAt(ids[1], old))
	p.settled(t)
	if n := countRows(t, p.pool, "status <> 'pending'"); n != 2 {
		t.Fatalf("%d rows completed, want 2", n)
	}
	res, err := retention.Pass(testCtx(t), p.pool, effectsTable, retention.Policy{Succeeded: h, Failed: h}, retention.PassOptions{})
	if err != nil || res.Removed != (retention.Counts{Succeeded: 1, Failed: 1}) {
		t.Fatalf("pass: %+v, %v", res.Removed, err)
	}

	// A redelivered success and a late re-run of the failed one: both are
	// counted as unknown and acked, and no row comes back.
	p.publish(t, succeededAt(ids[0], old), succeededAt(ids[1], time.Now()))
	p.settled(t)
	if got := testenv.MetricValue(t, p.reg, "effects_completions_skipped_total", "reason", completer.ReasonUnknownEffect); got != 2 {
		t.Errorf("skipped{unknown_effect} = %v, want 2", got)
	}
	if got := testenv.MetricValue(t, p.reg, "effects_completions_skipped_total", "reason", completer.ReasonMalformed); got != 0 {
		t.Errorf("skipped{malformed} = %v, want 0", got)
	}
	if got := testenv.MetricValue(t, p.reg, "effects_completer_write_errors_total"); got != 0 {
		t.Errorf("write errors = %v", got)
	}
	if n := countRows(t, p.pool, "true"); n != 0 {
		t.Errorf("%d rows in the table after late completions, want 0", n)
	}
}

// TestRemovalConcurrentWithCompletionsUnderLoad runs retention passes in a
// tight loop, from two "replicas", while the completer writes completions
// for new rows and late completions for the very rows being removed (failed
// rows re-run, which lock the row as the pass does). Nothing may fail or
// deadlock, every completion for a row that is kept must be written, and
// every old row must end up removed.
func TestRemovalConcurrentWithCompletionsUnderLoad(t *testing.T) {
	t.Parallel()
	p := startPipeline(t)
	old := time.Now().Add(-2 * h)
	oldSucceeded := insertMany(t, p.pool, 4000, rowSpec{"succeeded", 3 * h, 2 * h})
	oldFailed := insertMany(t, p.pool, 2000, rowSpec{"failed", 3 * h, 2 * h})
	fresh := insertMany(t, p.pool, 4000, rowSpec{"pending", time.Minute, 0})

	policy := retention.Policy{Succeeded: h, Failed: h}
	// Passes are not interrupted (a cancelled batch's backend may hold
	// the batch lock a moment after the client gave up): the replicas stop
	// between passes.
	var stopping atomic.Bool
	var wg sync.WaitGroup
	var passErrs []error
	var mu sync.Mutex
	for replica := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stopping.Load() {
				_, err := retention.Pass(testCtx(t), p.pool, effectsTable, policy, retention.PassOptions{BatchSize: 50 + replica*25})
				if err != nil && !errors.Is(err, retention.ErrPassRunning) {
					mu.Lock()
					passErrs = append(passErrs, err)
					mu.Unlock()
				}
			}
		}()
	}

	// Completions for the fresh rows (kept: completed now), interleaved
	// with late re-runs of old failed rows (old completion times, so a
	// written one is still due for removal) and redelivered successes.
	var comps []effects.Completion
	for i, id := range fresh {
		if i%5 == 4 {
			comps = append(comps, failedAt(id, time.Now()))
		} else {
			comps = append(comps, succeededAt(id, time.Now()))
		}
		if i < len(oldFailed) {
			comps = append(comps, succeededAt(oldFailed[i], old.Add(time.Second)))
		}
		if i < len(oldSucceeded) && i%2 == 0 {
			comps = append(comps, succeededAt(oldSucceeded[i], old))
		}
	}
	for start := 0; start < len(comps); start += 500 {
		p.publish(t, comps[start:min(start+500, len(comps))]...)
	}
	p.settled(t)
	stopping.Store(true)
	wg.Wait()
	for _, err := range passErrs {
		t.Errorf("pass: %v", err)
	}
	if got := testenv.MetricValue(t, p.reg, "effects_completer_write_errors_total"); got != 0 {
		t.Errorf("completer write errors = %v (a deadlock or lock timeout would show here)", got)
	}
	if got := testenv.MetricValue(t, p.reg, "effects_completions_skipped_total", "reason", completer.ReasonMalformed); got != 0 {
		t.Errorf("skipped{malformed} = %v", got)
	}

	// Every fresh row holds its completion: none was lost.
	wantFailed := len(fresh) / 5
	if n := countRows(t, p.pool, "created_at > now() - interval '30 minutes' AND status = 'succeeded'"); n != len(fresh)-wantFailed {
		t.Errorf("fresh succeeded rows = %d, want %d", n, len(fresh)-wantFailed)
	}
	if n := countRows(t, p.pool, "created_at > now() - interval '30 minutes' AND status = 'failed'"); n != wantFailed {
		t.Errorf("fresh failed rows = %d, want %d", n, wantFailed)
	}
	// A last pass removes whatever late completions re-wrote; then only
	// the fresh rows are left.
	if _, err := retention.Pass(testCtx(t), p.pool, effectsTable, policy, retention.PassOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, p.pool, "true"); n != len(fresh) {
		t.Errorf("%d rows left, want the %d fresh ones", n, len(fresh))
	}
	written := testenv.MetricValue(t, p.reg, "effects_completions_written_total")
	skipped := testenv.MetricValue(t, p.reg, "effects_completions_skipped_total")
	if total := written + skipped; total != float64(len(comps)) {
		t.Errorf("written %v + skipped %v = %v, want every one of %d completions accounted for", written, skipped, total, len(comps))
	}
	t.Logf("completions: %d, written %v, unknown %v, unchanged %v", len(comps), written,
		testenv.MetricValue(t, p.reg, "effects_completions_skipped_total", "reason", completer.ReasonUnknownEffect),
		testenv.MetricValue(t, p.reg, "effects_completions_skipped_total", "reason", completer.ReasonUnchanged))
}
