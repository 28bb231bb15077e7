package completer_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/testenv"
)

// These tests stop PostgreSQL under a running completer, so each has a
// PostgreSQL cluster of its own.

func newPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(ctx(t), url)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func (b *bundle) countStatus(t testing.TB, status string) (int, error) {
	var n int
	err := b.pool.QueryRow(ctx(t), "SELECT count(*) FROM effects WHERE status = $1", status).Scan(&n)
	return n, err
}

func TestPostgresDownNothingAckedThenResumes(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartPGCluster(t)
	b := setup(t, setupOpts{pool: newPool(t, cluster.URL), cfg: completer.Config{
		AckWait:      time.Second,
		RetryMax:     200 * time.Millisecond,
		WriteTimeout: 2 * time.Second,
		// One batch: the messages waiting behind a batch are not kept
		// alive, so this test keeps them all in the batch being retried.
		Linger:     300 * time.Millisecond,
		LingerFrom: 1,
		Writers:    1,
	}})
	testenv.WaitFor(t, 30*time.Second, "consuming", func() bool { return b.c.CheckConsuming(ctx(t)) == nil })
	const n = 20
	ids := make([]string, n)
	for i := range ids {
		ids[i] = b.insert(t, "echo")
	}

	cluster.Stop(t)
	now := time.Now()
	for _, id := range ids {
		b.publish(t, succeeded(id, now, `"done"`))
	}
	testenv.WaitFor(t, 30*time.Second, "failed writes", func() bool { return b.metric(t, "effects_completer_write_errors_total") >= 3 })
	if err := b.c.CheckPostgres(ctx(t)); err == nil {
		t.Error("CheckPostgres passes while PostgreSQL is down")
	}
	info := b.consumerInfo(t)
	if info.NumAckPending != n || info.AckFloor.Stream != 0 {
		t.Fatalf("while PostgreSQL is down: ack pending %d, ack floor %d; want %d, 0", info.NumAckPending, info.AckFloor.Stream, n)
	}
	// Longer than AckWait: InProgress keeps the batch from being redelivered.
	time.Sleep(2500 * time.Millisecond)
	if info := b.consumerInfo(t); info.NumRedelivered != 0 || info.NumAckPending != n {
		t.Fatalf("after 2.5 x AckWait: redelivered %d, ack pending %d", info.NumRedelivered, info.NumAckPending)
	}

	cluster.Start(t)
	testenv.WaitFor(t, 30*time.Second, "rows written after PostgreSQL came back", func() bool {
		got, err := b.countStatus(t, "succeeded")
		return err == nil && got == n
	})
	b.waitSettled(t)
	testenv.WaitFor(t, 10*time.Second, "ready", func() bool { return b.c.CheckPostgres(ctx(t)) == nil })
	if got := b.metric(t, "effects_completions_written_total"); got != n {
		t.Errorf("written = %v, want %d", got, n)
	}
}

func TestStopWhilePostgresDownHandsBack(t *testing.T) {
	t.Parallel()
	cluster := testenv.StartPGCluster(t)
	b := setup(t, setupOpts{pool: newPool(t, cluster.URL), cfg: completer.Config{
		AckWait:         30 * time.Second,
		RetryMax:        200 * time.Millisecond,
		WriteTimeout:    time.Second,
		ShutdownTimeout: time.Second,
	}})
	testenv.WaitFor(t, 30*time.Second, "consuming", func() bool { return b.c.CheckConsuming(ctx(t)) == nil })
	const n = 10
	ids := make([]string, n)
	for i := range ids {
		ids[i] = b.insert(t, "echo")
	}
	cluster.Stop(t)
	now := time.Now()
	for _, id := range ids {
		b.publish(t, failed(id, now, "x", 2))
	}
	testenv.WaitFor(t, 30*time.Second, "a failed write", func() bool { return b.metric(t, "effects_completer_write_errors_total") >= 1 })

	start := time.Now()
	if err := b.stopAndWait(t, 10*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stop took %s with a 1s shutdown timeout", d)
	}
	if info := b.consumerInfo(t); info.AckFloor.Stream != 0 {
		t.Fatalf("ack floor %d: something was acked while PostgreSQL was down", info.AckFloor.Stream)
	}

	// The completions were handed back (nak), so the next completer gets
	// them at once rather than after AckWait (30s).
	cluster.Start(t)
	b.start(t)
	testenv.WaitFor(t, 15*time.Second, "rows written by the next completer", func() bool {
		got, err := b.countStatus(t, "failed")
		return err == nil && got == n
	})
	b.waitSettled(t)
}
