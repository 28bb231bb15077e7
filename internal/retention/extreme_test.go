package retention_test

import (
	"math"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/pkg/effects"
)

// Rows created at infinity, -infinity or in a BC year: a pass removes the
// ones its rule says (-infinity and BC are older than any cutoff; infinity
// never is), and OldestAge, which fed effects_retention_oldest_row_seconds,
// leaves the infinite ones out instead of failing ("cannot subtract
// infinite timestamps") and caps the BC one's age instead of wrapping it.
func TestExtremeCreatedAt(t *testing.T) {
	t.Parallel()
	pool := migrated(t)
	insert := func(status, createdAt, completedAt string) string {
		t.Helper()
		var id string
		if err := pool.QueryRow(testCtx(t), `INSERT INTO effects (kind, status, created_at, completed_at)
			VALUES ('echo', $1, $2::timestamptz, now() - $3::interval) RETURNING id::text`, status, createdAt, completedAt).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	ordinary := insertRows(t, pool, rowSpec{"failed", 2 * h, 2 * h})[0]
	negInf := insert("failed", "-infinity", "3 hours")
	posInf := insert("failed", "infinity", "3 hours")
	bc := insert("failed", "0044-03-15 00:00:00+00 BC", "3 hours")
	// Completed recently: kept by a 1h retention, so the ages see them.
	insert("succeeded", "-infinity", "1 minute")
	insert("succeeded", "infinity", "1 minute")

	ages, err := retention.OldestAge(testCtx(t), pool, effectsTable)
	if err != nil {
		t.Fatalf("OldestAge: %v", err)
	}
	if got := ages[effects.StatusFailed]; got != time.Duration(math.MaxInt64) {
		t.Errorf("oldest failed age %s, want the cap (a row from 44 BC)", got)
	}
	if got, ok := ages[effects.StatusSucceeded]; ok {
		t.Errorf("oldest succeeded age %s, want none (only infinite rows)", got)
	}

	res, err := retention.Pass(testCtx(t), pool, effectsTable, retention.Policy{Succeeded: h, Failed: h}, retention.PassOptions{BatchSize: 1})
	if err != nil {
		t.Fatalf("Pass: %v", err)
	}
	left := remaining(t, pool)
	for name, c := range map[string]struct {
		id   string
		gone bool
	}{"ordinary": {ordinary, true}, "-infinity": {negInf, true}, "BC": {bc, true}, "infinity": {posInf, false}} {
		if gone := !left[c.id]; gone != c.gone {
			t.Errorf("failed row created at %s: removed=%v, want %v", name, gone, c.gone)
		}
	}
	if res.Removed != (retention.Counts{Failed: 3}) {
		t.Errorf("removed %+v, want 3 failed", res.Removed)
	}
	ages, err = retention.OldestAge(testCtx(t), pool, effectsTable)
	if err != nil {
		t.Fatalf("OldestAge after the pass: %v", err)
	}
	if _, ok := ages[effects.StatusFailed]; ok {
		t.Errorf("oldest failed age %s, want none (only the infinity row is left)", ages[effects.StatusFailed])
	}
}
