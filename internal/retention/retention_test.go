package retention_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

const h = time.Hour

// The rows every policy case runs against, named by what they are.
var fixture = []struct {
	name string
	row  rowSpec
}{
	{"pending new", rowSpec{"pending", time.Minute, 0}},
	{"pending ancient", rowSpec{"pending", 10000 * h, 0}},
	{"pending ancient with completed_at", rowSpec{"pending", 10000 * h, 9000 * h}}, // set by hand: still pending
	{"succeeded 3h", rowSpec{"succeeded", 3 * h, 3 * h}},
	{"succeeded 90m", rowSpec{"succeeded", 90 * time.Minute, 90 * time.Minute}},
	{"succeeded 30m", rowSpec{"succeeded", 30 * time.Minute, 30 * time.Minute}},
	{"succeeded created 3h, completed 30m", rowSpec{"succeeded", 3 * h, 30 * time.Minute}},
	{"failed 3h", rowSpec{"failed", 3 * h, 3 * h}},
	{"failed 90m", rowSpec{"failed", 90 * time.Minute, 90 * time.Minute}},
	{"failed 30m", rowSpec{"failed", 30 * time.Minute, 30 * time.Minute}},
	{"failed created 3h, completed 30m", rowSpec{"failed", 3 * h, 30 * time.Minute}},
	{"failed 3h without completed_at", rowSpec{"failed", 3 * h, 0}},
	{"cancelled 3h", rowSpec{"cancelled", 3 * h, 3 * h}},
	{"cancelled created 3h, cancelled 30m", rowSpec{"cancelled", 3 * h, 30 * time.Minute}},
}

func TestPassRemovesExactlyAsConfigured(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		policy  retention.Policy
		removed []string
	}{
		{"keep forever", retention.Policy{}, nil},
		{"succeeded 1h", retention.Policy{Succeeded: h}, []string{"succeeded 3h", "succeeded 90m"}},
		{"succeeded 2h", retention.Policy{Succeeded: 2 * h}, []string{"succeeded 3h"}},
		{"failed 1h", retention.Policy{Failed: h}, []string{"failed 3h", "failed 90m", "failed 3h without completed_at"}},
		{"both 1h", retention.Policy{Succeeded: h, Failed: h}, []string{"succeeded 3h", "succeeded 90m", "failed 3h", "failed 90m", "failed 3h without completed_at"}},
		{"both 1 microsecond", retention.Policy{Succeeded: time.Microsecond, Failed: time.Microsecond}, []string{
			"succeeded 3h", "succeeded 90m", "succeeded 30m", "succeeded created 3h, completed 30m",
			"failed 3h", "failed 90m", "failed 30m", "failed created 3h, completed 30m", "failed 3h without completed_at"}},
		{"cancelled 1h", retention.Policy{Cancelled: h}, []string{"cancelled 3h"}},
		{"cancelled 1 microsecond", retention.Policy{Cancelled: time.Microsecond}, []string{"cancelled 3h", "cancelled created 3h, cancelled 30m"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := migrated(t)
			specs := make([]rowSpec, len(fixture))
			for i, f := range fixture {
				specs[i] = f.row
			}
			ids := insertRows(t, pool, specs...)
			wantGone := map[string]bool{}
			for _, name := range tc.removed {
				wantGone[name] = true
			}

			// A dry run counts exactly what the pass then removes, and
			// removes nothing.
			dry, err := retention.Pass(testCtx(t), pool, effectsTable, tc.policy, retention.PassOptions{DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(remaining(t, pool)); got != len(fixture) {
				t.Fatalf("dry run removed rows: %d left of %d", got, len(fixture))
			}
			// Batches of 1, so the loop over batches is exercised.
			res, err := retention.Pass(testCtx(t), pool, effectsTable, tc.policy, retention.PassOptions{BatchSize: 1})
			if err != nil {
				t.Fatal(err)
			}
			left := remaining(t, pool)
			var want retention.Counts
			for i, f := range fixture {
				if gone := !left[ids[i]]; gone != wantGone[f.name] {
					t.Errorf("%s: removed=%v, want %v", f.name, gone, wantGone[f.name])
				}
				if wantGone[f.name] {
					switch f.row.status {
					case "succeeded":
						want.Succeeded++
					case "failed":
						want.Failed++
					default:
						want.Cancelled++
					}
				}
			}
			if res.Removed != want {
				t.Errorf("pass removed %+v, want %+v", res.Removed, want)
			}
			if dry.Removed != res.Removed || !dry.DryRun || res.DryRun {
				t.Errorf("dry run %+v, pass %+v", dry, res)
			}
			for _, s := range retention.Statuses {
				keep := map[effects.Status]time.Duration{effects.StatusSucceeded: tc.policy.Succeeded, effects.StatusFailed: tc.policy.Failed, effects.StatusCancelled: tc.policy.Cancelled}[s]
				if _, has := res.Cutoff[s]; has != (keep > 0) {
					t.Errorf("cutoff for %s: %v, retention %s", s, res.Cutoff, keep)
				}
			}
		})
	}
}

func TestPendingRowsSurviveAnySetting(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	insertMany(t, pool, 50, rowSpec{"pending", 100000 * h, 0})
	insertMany(t, pool, 50, rowSpec{"pending", 100000 * h, 100000 * h})
	for _, p := range []retention.Policy{
		{Succeeded: time.Nanosecond}, {Failed: time.Nanosecond},
		{Succeeded: time.Microsecond, Failed: time.Microsecond}, {Succeeded: 1000000 * h, Failed: 1000000 * h},
	} {
		res, err := retention.Pass(testCtx(t), pool, effectsTable, p, retention.PassOptions{BatchSize: 7})
		if err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		if res.Removed != (retention.Counts{}) {
			t.Errorf("%+v removed %+v", p, res.Removed)
		}
	}
	if n := countRows(t, pool, "status = 'pending'"); n != 100 {
		t.Fatalf("pending rows left: %d of 100", n)
	}
}

func TestConcurrentPassesRemoveEachRowOnce(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	insertMany(t, pool, 3000, rowSpec{"succeeded", 2 * h, 2 * h})
	insertMany(t, pool, 1000, rowSpec{"failed", 2 * h, 2 * h})
	keep := insertMany(t, pool, 100, rowSpec{"succeeded", time.Minute, time.Minute})
	p := retention.Policy{Succeeded: h, Failed: h}

	// Four replicas at once: each pass either removes or finds another
	// one removing (ErrPassRunning); none fails, and together, repeated
	// until a pass finds nothing, they remove each row exactly once.
	var mu sync.Mutex
	var total retention.Counts
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				res, err := retention.Pass(testCtx(t), pool, effectsTable, p, retention.PassOptions{BatchSize: 50})
				mu.Lock()
				total.Succeeded += res.Removed.Succeeded
				total.Failed += res.Removed.Failed
				mu.Unlock()
				if errors.Is(err, retention.ErrPassRunning) {
					continue
				}
				if err != nil {
					t.Error(err)
				}
				return
			}
		}()
	}
	wg.Wait()
	// The last pass to end may have left rows to one that ended
	// earlier; one more pass finishes them.
	res, err := retention.Pass(testCtx(t), pool, effectsTable, p, retention.PassOptions{})
	if err != nil {
		t.Fatal(err)
	}
	total.Succeeded += res.Removed.Succeeded
	total.Failed += res.Removed.Failed
	if total != (retention.Counts{Succeeded: 3000, Failed: 1000}) {
		t.Fatalf("removed %+v, want 3000 succeeded and 1000 failed", total)
	}
	left := remaining(t, pool)
	if len(left) != len(keep) {
		t.Fatalf("%d rows left, want the %d recent ones", len(left), len(keep))
	}
}

func TestPassStopsWhenContextEnds(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	insertMany(t, pool, 100, rowSpec{"succeeded", 2 * h, 2 * h})
	ctx, cancel := context.WithCancel(testCtx(t))
	var batches int
	res, err := retention.Pass(ctx, pool, effectsTable, retention.Policy{Succeeded: h}, retention.PassOptions{
		BatchSize: 10,
		OnBatch: func(s effects.Status, n int64) {
			if batches++; batches == 3 {
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) || res.Removed.Succeeded != 30 {
		t.Fatalf("pass: %+v, %v; want 30 removed and context.Canceled", res.Removed, err)
	}
	if n := countRows(t, pool, "true"); n != 70 {
		t.Fatalf("%d rows left, want 70", n)
	}
}

func TestRemoverRunsAtStartAndEveryInterval(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	insertMany(t, pool, 25, rowSpec{"succeeded", 3 * h, 3 * h})
	insertMany(t, pool, 5, rowSpec{"failed", 3 * h, 3 * h})
	insertMany(t, pool, 2, rowSpec{"failed", 30 * time.Minute, 30 * time.Minute})
	insertMany(t, pool, 1, rowSpec{"pending", 5 * h, 0})
	reg := prometheus.NewRegistry()
	rm, err := retention.New(retention.Config{
		Table: "effects", Policy: retention.Policy{Succeeded: 2 * h, Failed: 2 * h},
		Interval: 50 * time.Millisecond, BatchSize: 10,
	}, pool, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- rm.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	testenv.WaitFor(t, 30*time.Second, "the first pass", func() bool {
		return testenv.MetricValue(t, reg, "effects_retention_passes_total", "result", "done") >= 1
	})
	if got := testenv.MetricValue(t, reg, "effects_retention_removed_total", "status", "succeeded"); got != 25 {
		t.Errorf("removed{succeeded} = %v, want 25", got)
	}
	if got := testenv.MetricValue(t, reg, "effects_retention_removed_total", "status", "failed"); got != 5 {
		t.Errorf("removed{failed} = %v, want 5", got)
	}
	// The oldest failed row kept is 30 minutes old; no succeeded row is left.
	testenv.WaitFor(t, 30*time.Second, "the oldest-kept gauge", func() bool {
		return testenv.MetricValue(t, reg, "effects_retention_oldest_kept_seconds", "status", "failed") >= 1800
	})
	if got := testenv.MetricValue(t, reg, "effects_retention_oldest_kept_seconds", "status", "failed"); got > 1800+60 {
		t.Errorf("oldest_kept{failed} = %vs, want about 1800", got)
	}
	if got := testenv.MetricValue(t, reg, "effects_retention_oldest_kept_seconds", "status", "succeeded"); got != 0 {
		t.Errorf("oldest_kept{succeeded} = %vs, want 0 (none left)", got)
	}

	// Rows that age past the retention later are removed by a later pass.
	insertMany(t, pool, 3, rowSpec{"succeeded", 4 * h, 4 * h})
	testenv.WaitFor(t, 30*time.Second, "a later pass", func() bool {
		return testenv.MetricValue(t, reg, "effects_retention_removed_total", "status", "succeeded") == 28
	})
	if n := countRows(t, pool, "true"); n != 3 {
		t.Errorf("%d rows left, want the 2 recent failed and the pending one", n)
	}
	if got := testenv.MetricValue(t, reg, "effects_retention_passes_total", "result", "error"); got != 0 {
		t.Errorf("passes{error} = %v", got)
	}
}

func TestRemoverCountsFailedPass(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	reg := prometheus.NewRegistry()
	rm, err := retention.New(retention.Config{Table: "missing", Policy: retention.Policy{Succeeded: h}}, pool, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rm.RunPass(testCtx(t)); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("pass on a missing table: %v", err)
	}
	if got := testenv.MetricValue(t, reg, "effects_retention_passes_total", "result", "error"); got != 1 {
		t.Errorf("passes{error} = %v, want 1", got)
	}
}

func TestRemoverKeepingEverythingReturnsAtOnce(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	insertMany(t, pool, 3, rowSpec{"succeeded", 100000 * h, 100000 * h})
	rm, err := retention.New(retention.Config{Table: "effects"}, pool, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := rm.Run(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, pool, "true"); n != 3 {
		t.Fatalf("%d rows left of 3", n)
	}
}

func TestGone(t *testing.T) {
	t.Parallel()
	err := retention.Gone("effects", "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11", retention.Policy{Failed: 720 * h})
	if !errors.Is(err, retention.ErrGone) {
		t.Fatalf("%v does not wrap ErrGone", err)
	}
	for _, want := range []string{"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11", "removed by retention", "failed rows: removed 720h0m0s after completion", "cannot be re-run"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	err = retention.Gone("effects", "x", retention.Policy{})
	if !errors.Is(err, retention.ErrGone) || !strings.Contains(err.Error(), "retention removes nothing") {
		t.Errorf("with no retention: %v", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	c, err := retention.ConfigFromEnv(envconfig.FromMap(nil), "effects")
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != (retention.Policy{}) || c.Interval != time.Minute || c.Policy.Enabled() {
		t.Errorf("defaults: %+v", c)
	}
	c, err = retention.ConfigFromEnv(envconfig.FromMap(map[string]string{
		"EFFECTS_RETAIN_SUCCEEDED": "720h", "EFFECTS_RETAIN_FAILED": "0", "EFFECTS_RETAIN_INTERVAL": "5m",
	}), "effects")
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != (retention.Policy{Succeeded: 720 * h}) || c.Interval != 5*time.Minute || !c.Policy.Enabled() {
		t.Errorf("set: %+v", c)
	}
	if s := c.Policy.String(); s != "succeeded rows: removed 720h0m0s after completion; failed rows: kept forever; cancelled rows: kept forever; pending rows: kept until completed" {
		t.Errorf("String: %q", s)
	}
	c, err = retention.ConfigFromEnv(envconfig.FromMap(map[string]string{"EFFECTS_RETAIN_SUCCEEDED": "", "EFFECTS_RETAIN_FAILED": " "}), "effects")
	if err != nil || c.Policy.Enabled() {
		t.Errorf("empty values: %+v, %v", c, err)
	}
	for env, want := range map[string]string{
		"EFFECTS_RETAIN_SUCCEEDED=30d": "EFFECTS_RETAIN_SUCCEEDED",
		"EFFECTS_RETAIN_FAILED=-1h":    "EFFECTS_RETAIN_FAILED",
		"EFFECTS_RETAIN_CANCELLED=-1h": "EFFECTS_RETAIN_CANCELLED",
		"EFFECTS_RETAIN_INTERVAL=0":    "EFFECTS_RETAIN_INTERVAL",
		"EFFECTS_RETAIN_INTERVAL=-1s":  "EFFECTS_RETAIN_INTERVAL",
	} {
		k, v, _ := strings.Cut(env, "=")
		_, err := retention.ConfigFromEnv(envconfig.FromMap(map[string]string{k: v}), "effects")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error naming %s", env, err, want)
		}
	}
	if _, err := retention.ConfigFromEnv(envconfig.FromMap(nil), "bad name"); err == nil || !strings.Contains(err.Error(), "EFFECTS_TABLE") {
		t.Errorf("bad table: %v", err)
	}
}

// TestPassSkipsLockedRows: a row being written (locked by a completion's
// UPDATE) is skipped, not waited for, and a later pass removes it.
func TestPassSkipsLockedRows(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	ids := insertMany(t, pool, 10, rowSpec{"failed", 3 * h, 2 * h})
	tx, err := pool.Begin(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	// The oldest row, as a completion re-running it would lock it.
	if _, err := tx.Exec(testCtx(t), `UPDATE effects SET attempts = attempts + 1 WHERE id = $1`, ids[0]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second)
	defer cancel()
	res, err := retention.Pass(ctx, pool, effectsTable, retention.Policy{Failed: h}, retention.PassOptions{BatchSize: 3})
	if err != nil || res.Removed.Failed != 9 {
		t.Fatalf("pass with a locked row: %+v, %v; want the 9 others removed without waiting", res.Removed, err)
	}
	if err := tx.Commit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	res, err = retention.Pass(testCtx(t), pool, effectsTable, retention.Policy{Failed: h}, retention.PassOptions{})
	if err != nil || res.Removed.Failed != 1 {
		t.Fatalf("next pass: %+v, %v; want the formerly locked row removed", res.Removed, err)
	}
}
