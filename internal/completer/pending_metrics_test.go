package completer_test

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/testenv"
)

// TestOldestPendingSeconds: each scrape reads the age of the oldest pending
// row, ignoring rows that are done, and reports 0 when none is pending; a
// PostgreSQL it cannot reach is effects_oldest_pending_up 0, not a failed
// scrape.
func TestOldestPendingSeconds(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	if got := b.metric(t, "effects_oldest_pending_seconds"); got != 0 {
		t.Errorf("no row: effects_oldest_pending_seconds = %v, want 0", got)
	}
	if got := b.metric(t, "effects_oldest_pending_up"); got != 1 {
		t.Errorf("effects_oldest_pending_up = %v, want 1", got)
	}

	old, older, done := b.insert(t, "send_email"), b.insert(t, "send_email"), b.insert(t, "send_email")
	for id, sql := range map[string]string{
		old:   `UPDATE %s SET created_at = now() - interval '1 hour' WHERE id = $1`,
		older: `UPDATE %s SET created_at = now() - interval '2 hours' WHERE id = $1`,
		// Done rows do not count, however old.
		done: `UPDATE %s SET created_at = now() - interval '3 days', status = 'succeeded', completed_at = now() WHERE id = $1`,
	} {
		if _, err := b.pool.Exec(ctx(t), fmt.Sprintf(sql, quote(b.table)), id); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.metric(t, "effects_oldest_pending_seconds"); got < 2*3600 || got > 2*3600+600 {
		t.Errorf("effects_oldest_pending_seconds = %v, want about 7200", got)
	}
	if _, err := b.pool.Exec(ctx(t), fmt.Sprintf(`UPDATE %s SET status = 'failed', completed_at = now() WHERE id = $1`, quote(b.table)), older); err != nil {
		t.Fatal(err)
	}
	if got := b.metric(t, "effects_oldest_pending_seconds"); got < 3600 || got > 3600+600 {
		t.Errorf("after the oldest failed: effects_oldest_pending_seconds = %v, want about 3600", got)
	}

	// Nothing listens on port 1.
	pool, err := pgxpool.New(ctx(t), "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	reg := newRegistry()
	if _, err := completer.New(b.cfg, pool, b.js, testLogger(t), reg); err != nil {
		t.Fatal(err)
	}
	if got := testenv.MetricValue(t, reg, "effects_oldest_pending_up"); got != 0 {
		t.Errorf("PostgreSQL down: effects_oldest_pending_up = %v, want 0", got)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "effects_oldest_pending_seconds" {
			t.Error("effects_oldest_pending_seconds exported while PostgreSQL is down")
		}
	}
}

// TestOldestPendingSecondsWithInfiniteCreatedAt: pending rows created at
// 'infinity' or '-infinity' have no age and are left out. Subtracting one
// failed the query ("cannot subtract infinite timestamps"), so a single
// such row made every scrape effects_oldest_pending_up 0 and hid the
// backlog's age.
func TestOldestPendingSecondsWithInfiniteCreatedAt(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	hour, negInf, posInf := b.insert(t, "send_email"), b.insert(t, "send_email"), b.insert(t, "send_email")
	for id, sql := range map[string]string{
		hour:   `UPDATE %s SET created_at = now() - interval '1 hour' WHERE id = $1`,
		negInf: `UPDATE %s SET created_at = '-infinity' WHERE id = $1`,
		posInf: `UPDATE %s SET created_at = 'infinity' WHERE id = $1`,
	} {
		if _, err := b.pool.Exec(ctx(t), fmt.Sprintf(sql, quote(b.table)), id); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.metric(t, "effects_oldest_pending_up"); got != 1 {
		t.Errorf("effects_oldest_pending_up = %v, want 1", got)
	}
	if got := b.metric(t, "effects_oldest_pending_seconds"); got < 3600 || got > 3600+600 {
		t.Errorf("effects_oldest_pending_seconds = %v, want about 3600 (the finite row's age)", got)
	}
}

// TestOldestPendingSecondsFromTheDueTime: a pending row is old from when it
// was due. A scheduled effect inserted days ago and waiting for tomorrow
// has no age (an alert on the gauge must not fire for it); one due an hour
// ago is an hour old, whenever it was inserted.
func TestOldestPendingSecondsFromTheDueTime(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	waiting, due := b.insert(t, "send_email"), b.insert(t, "send_email")
	if _, err := b.pool.Exec(ctx(t), fmt.Sprintf(`UPDATE %s SET created_at = now() - interval '3 days', run_at = now() + interval '1 day' WHERE id = $1`,
		quote(b.table)), waiting); err != nil {
		t.Fatal(err)
	}
	if _, err := b.pool.Exec(ctx(t), fmt.Sprintf(`UPDATE %s SET status = 'succeeded', completed_at = now() WHERE id = $1`, quote(b.table)), due); err != nil {
		t.Fatal(err)
	}
	if got := b.metric(t, "effects_oldest_pending_seconds"); got != 0 {
		t.Errorf("only a waiting effect: effects_oldest_pending_seconds = %v, want 0", got)
	}
	if _, err := b.pool.Exec(ctx(t), fmt.Sprintf(`UPDATE %s SET run_at = now() - interval '1 hour' WHERE id = $1`, quote(b.table)), waiting); err != nil {
		t.Fatal(err)
	}
	if got := b.metric(t, "effects_oldest_pending_seconds"); got < 3600 || got > 3600+600 {
		t.Errorf("due an hour ago: effects_oldest_pending_seconds = %v, want about 3600", got)
	}
}
