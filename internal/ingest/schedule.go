package ingest

import (
	"fmt"
	"strings"
	"time"
)

// cursorRows is the table source's read predicate, its partial index's
// (migration 008) word for word so that the planner uses it: pending rows
// not handed to JetStream by anyone else, without the scheduled ones (the
// completer's scheduler publishes those when due; the cursor passes them).
const cursorRows = `status = 'pending' AND published_at IS NULL AND (run_at IS NULL OR run_at <= created_at)`

// Scheduled reports whether a row with these values is scheduled: its
// run_at is after its created_at. No source publishes a scheduled row at
// its insert; the completer's scheduler publishes it once run_at has passed.
// The rule reads only the row, so every source, the scheduler and the
// indexes of migration 008 (which write it in SQL as run_at > created_at)
// agree on it without asking each other. A zero runAt is a NULL run_at.
func Scheduled(createdAt, runAt time.Time) bool {
	return !runAt.IsZero() && runAt.After(createdAt)
}

// runAt reads the row's run_at and whether the row is scheduled (see
// [Scheduled]). A run_at that PostgreSQL wrote but no effect message can
// carry is decided as SQL decides run_at > created_at: 'infinity' and a
// year past 9999 are scheduled and never due (the zero time is returned
// with true); '-infinity' and BC dates are not scheduled. Anything else
// that is not a timestamp is a bad request naming the field.
func (row *eventRow) runAt(createdAt time.Time) (time.Time, bool, error) {
	if row.RunAt == "" {
		return time.Time{}, false, nil
	}
	if t, ok := parseTimestamp(row.RunAt); ok {
		return t.UTC(), Scheduled(createdAt, t), nil
	}
	if unrepresentableTimestamp(row.RunAt) {
		future := !strings.HasPrefix(row.RunAt, "-") && !strings.HasSuffix(row.RunAt, " BC")
		return time.Time{}, future, nil
	}
	return time.Time{}, false, badRequest(fmt.Sprintf("event.data.new.run_at %s is not a timestamp", quoteShort(row.RunAt)))
}
