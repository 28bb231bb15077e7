package completer

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// item is one well-formed completion taken from JetStream.
type item struct {
	msg  jetstream.Msg
	comp effects.Completion
	id   [16]byte
	// completion is what goes into the completion column: nil (SQL NULL)
	// for an absent or JSON null completion.
	completion []byte
	// res is what writing it did (for the winner of its id).
	res result
	// span is the write's span while tracing is on (tracing.go).
	span trace.Span
}

// parseItem decodes the body of a completion message; the error says why it
// is malformed.
func parseItem(data []byte) (item, error) {
	comp, err := effects.ParseCompletion(data)
	if err != nil {
		return item{}, err
	}
	if comp.Attempts > math.MaxInt32 {
		return item{}, fmt.Errorf("%w: attempts %d is too large", effects.ErrMalformedCompletion, comp.Attempts)
	}
	it := item{comp: comp, id: parseUUID(comp.EffectID)}
	if raw := bytes.TrimSpace(comp.Completion); len(raw) > 0 && !bytes.Equal(raw, []byte("null")) {
		it.completion = raw
	}
	// PostgreSQL text cannot hold NUL; keep the rest of the message rather
	// than lose the outcome over one byte.
	if e := it.comp.Error; e != nil && strings.IndexByte(*e, 0) >= 0 {
		s := strings.ReplaceAll(*e, "\x00", "\uFFFD")
		it.comp.Error = &s
	}
	return it, nil
}

// parseUUID decodes a UUID that [effects.IsUUID] accepted.
func parseUUID(s string) [16]byte {
	var id [16]byte
	var hexDigits [32]byte
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '-' {
			hexDigits[n] = s[i]
			n++
		}
	}
	_, _ = hex.Decode(id[:], hexDigits[:])
	return id
}

// reduce picks, for every effect id that occurs more than once in items, the
// completion that applying them one at a time in stream order would leave in
// the row, so that a batch ends exactly as sequential writes would. (It must
// be done here: UPDATE ... FROM with two source rows for one target row
// applies an arbitrary one.) The rules, as in the statement: a succeeded
// completion is never replaced, so the first succeeded one wins; a succeeded
// one replaces a failed one; a failed one replaces a failed one unless it is
// older. winners are indexes of items with distinct ids; loserOf maps the
// index of every other item to the index of the winner of its id.
//
// byID and loserOf are cleared and reused.
func reduce(items []item, winners []int, byID map[[16]byte]int, loserOf map[int]int) []int {
	winners = winners[:0]
	clear(byID) // id -> position in winners
	clear(loserOf)
	for i := range items {
		w, seen := byID[items[i].id]
		if !seen {
			byID[items[i].id] = len(winners)
			winners = append(winners, i)
			continue
		}
		if replaces(items[i].comp, items[winners[w]].comp) {
			loserOf[winners[w]] = i
			winners[w] = i
		} else {
			loserOf[i] = winners[w]
		}
	}
	// A loser whose winner was later replaced follows the final winner.
	for l, w := range loserOf {
		for {
			next, ok := loserOf[w]
			if !ok {
				break
			}
			w = next
		}
		loserOf[l] = w
	}
	return winners
}

// replaces reports whether newer, arriving after older, would overwrite it
// in the row.
func replaces(newer, older effects.Completion) bool {
	switch {
	case older.Status == effects.StatusSucceeded:
		return false
	case newer.Status == effects.StatusSucceeded:
		return true
	default:
		return !newer.CompletedAt.Before(older.CompletedAt)
	}
}

// outcome is what writing one completion did.
type outcome uint8

const (
	// notDone: not written (yet); the message goes back to JetStream.
	notDone outcome = iota
	written
	unchanged
	// cancelledRow: the row is cancelled (by an operator); a completion
	// never changes it.
	cancelledRow
	unknownEffect
	// rejected: PostgreSQL refused the completion's values (a value error
	// on a batch of one); the message is terminated.
	rejected
)

type result struct {
	outcome outcome
	kind    string  // the row's kind, when written
	age     float64 // seconds from the row's created_at to the write, when written
	reason  string  // why PostgreSQL rejected it
	// substituted: PostgreSQL refused the completion's values and a failed
	// completion saying so was written in its place.
	substituted bool
}

// writeSQL is the one statement that writes a batch. The arrays carry one
// completion per effect id (see reduce); WITH ORDINALITY numbers them so each
// result row maps back without parsing ids. The UPDATE's WHERE clause is the
// rule set:
//   - a pending row takes any completion;
//   - a failed row takes a succeeded completion (a re-run), or a failed one
//     that is not older than its own;
//   - a succeeded row never changes, nor does a cancelled one (an
//     operator cancelled it; a late completion of an attempt that ran
//     anyway is not recorded);
//   - a completion equal to what the row holds (a duplicate) changes nothing,
//     and writes no new row version.
//
// The rule is a CASE rather than ORs of status tests on purpose: the planner
// matches such ORs to the partial pending/failed indexes (EXPLAIN showed a
// BitmapOr over both feeding a hash join), which reads every pending row per
// batch, a cost that grows with the backlog. Behind a CASE the only way in is
// the primary key: one probe per completion, whatever the backlog.
//
// Each array is behind a scalar subquery for the same reason. A prepared
// statement's first five runs are planned with its values: unnest of a
// constant array of 400 ids is known to give 400 rows, and the planner then
// priced 400 primary-key probes above a sequential scan and hash of the
// whole table (50,000 rows: 48-58 ms a batch instead of 17-18 ms, and
// growing with the table). A subquery's array has no known length, so the
// input is estimated at unnest's default 100 rows, with or without the
// values, and the plan is the nested loop over the primary key
// (docs/performance.md, "Plans that scanned the table").
//
// The final SELECT tells, for every input, written / unchanged (the row
// exists: the subquery runs only for the rows not written, and sees the
// statement's snapshot, in which the row exists whether or not it was
// updated) / cancelled (the row exists and is cancelled) / unknown (no such
// row). The age is measured with the database's clock, the clock
// that set created_at; a row created at 'infinity' has none (subtracting it
// is an error, which would refuse the row's every completion).
const writeSQL = `
WITH input AS (
    SELECT *
      FROM unnest((SELECT $1::uuid[]), (SELECT $2::text[]), (SELECT $3::jsonb[]),
                  (SELECT $4::text[]), (SELECT $5::int4[]), (SELECT $6::timestamptz[]))
           WITH ORDINALITY AS i(id, status, completion, error, attempts, completed_at, n)
), updated AS (
    UPDATE %[1]s AS e
       SET status = i.status,
           completion = i.completion,
           error = i.error,
           attempts = i.attempts,
           completed_at = i.completed_at
      FROM input AS i
     WHERE e.id = i.id
       AND CASE e.status
               WHEN 'pending' THEN true
               WHEN 'failed' THEN i.status = 'succeeded' OR e.completed_at IS NULL OR i.completed_at >= e.completed_at
               ELSE false
           END
       AND (e.status, e.completion, e.error, e.attempts, e.completed_at)
           IS DISTINCT FROM (i.status, i.completion, i.error, i.attempts, i.completed_at)
    RETURNING i.n, e.kind,
              CASE WHEN isfinite(e.created_at) THEN extract(epoch FROM clock_timestamp() - e.created_at)::float8 END AS age
)
SELECT i.n,
       CASE WHEN u.n IS NOT NULL THEN 'w'
            ELSE coalesce((SELECT CASE x.status WHEN 'cancelled' THEN 'c' ELSE 'u' END
                             FROM %[1]s AS x WHERE x.id = i.id), 'x') END,
       u.kind,
       u.age
  FROM input AS i LEFT JOIN updated AS u ON u.n = i.n`

// batchWriter writes batches of completions with [writeSQL]. Its argument
// slices are reused from batch to batch; it is not safe for concurrent use.
type batchWriter struct {
	pool *pgxpool.Pool
	sql  string

	ids         refArray[pgtype.UUID]
	statuses    refArray[pgtype.Text]
	completions [][]byte
	errs        refArray[pgtype.Text]
	attempts    []int32
	completedAt refArray[pgtype.Timestamptz]
	// kinds holds the kinds the statement returned, so that a row's kind
	// is a string made once, not once per row.
	kinds map[string]string
}

// maxKinds bounds batchWriter.kinds: past it a kind is a string of its own
// per row, as before the cache.
const maxKinds = 1024

func newBatchWriter(pool *pgxpool.Pool, table schema.Table) *batchWriter {
	return &batchWriter{pool: pool, sql: fmt.Sprintf(writeSQL, table.Quoted()), kinds: make(map[string]string)}
}

// refArray is an array parameter whose elements pgx reads through
// pointers. pgx takes each element of an array as an interface value: a
// pointer goes into one as it is, where a [16]byte, a time or a string is
// first copied to the heap (one to two allocations per element and array,
// per completion). The element types implement pgx's valuer interfaces
// (UUIDValuer, TextValuer, TimestamptzValuer) on their pointers too, so
// each is encoded directly.
type refArray[T any] []T

func (a refArray[T]) Dimensions() []pgtype.ArrayDimension {
	if a == nil {
		return nil
	}
	return []pgtype.ArrayDimension{{Length: int32(len(a)), LowerBound: 1}}
}

func (a refArray[T]) Index(i int) any { return &a[i] }
func (a refArray[T]) IndexType() any  { return new(T) }

// kind returns b as a string, from w.kinds when it is there.
func (w *batchWriter) kind(b []byte) string {
	if k, ok := w.kinds[string(b)]; ok {
		return k
	}
	k := string(b)
	if len(w.kinds) < maxKinds {
		w.kinds[k] = k
	}
	return k
}

// write runs the statement once for rows, setting each row's res. On error
// every res is left notDone: a statement that failed committed nothing.
func (w *batchWriter) write(ctx context.Context, rows []*item) (err error) {
	w.ids, w.statuses, w.completions = w.ids[:0], w.statuses[:0], w.completions[:0]
	w.errs, w.attempts, w.completedAt = w.errs[:0], w.attempts[:0], w.completedAt[:0]
	for _, r := range rows {
		w.ids = append(w.ids, pgtype.UUID{Bytes: r.id, Valid: true})
		w.statuses = append(w.statuses, pgtype.Text{String: string(r.comp.Status), Valid: true})
		w.completions = append(w.completions, r.completion)
		e := pgtype.Text{}
		if r.comp.Error != nil {
			e = pgtype.Text{String: *r.comp.Error, Valid: true}
		}
		w.errs = append(w.errs, e)
		w.attempts = append(w.attempts, int32(r.comp.Attempts))
		w.completedAt = append(w.completedAt, pgtype.Timestamptz{Time: r.comp.CompletedAt, Valid: true})
	}
	defer func() {
		if err != nil {
			for _, r := range rows {
				r.res = result{}
			}
		}
	}()
	res, err := w.pool.Query(ctx, w.sql, w.ids, w.statuses, w.completions, w.errs, w.attempts, w.completedAt)
	if err != nil {
		return err
	}
	defer res.Close()
	var (
		n int64
		// Read in place (valid until the next row), then kept through
		// w.kind: no allocation per row.
		code, kind pgtype.DriverBytes
		age        pgtype.Float8
	)
	for res.Next() {
		if err := res.Scan(&n, &code, &kind, &age); err != nil {
			return err
		}
		if n < 1 || int(n) > len(rows) {
			return fmt.Errorf("batch statement returned row number %d of %d", n, len(rows))
		}
		r := &rows[n-1].res
		switch string(code) {
		case "w":
			r.outcome = written
			if kind != nil {
				r.kind = w.kind(kind)
			}
			if age.Valid {
				r.age = age.Float64
			}
		case "u":
			r.outcome = unchanged
		case "c":
			r.outcome = cancelledRow
		default:
			r.outcome = unknownEffect
		}
	}
	// Close waits for the server's ReadyForQuery, after the implicit
	// transaction of the statement committed; Err reports a failed commit.
	res.Close()
	if err := res.Err(); err != nil {
		return err
	}
	for i, r := range rows {
		if r.res.outcome == notDone {
			return fmt.Errorf("batch statement returned no row for completion %d of %d", i+1, len(rows))
		}
	}
	return nil
}

// sortByID orders rows by effect id, so that two completers updating
// overlapping rows lock them in the same order rather than deadlock.
func sortByID(rows []*item) {
	slices.SortFunc(rows, func(a, b *item) int { return bytes.Compare(a.id[:], b.id[:]) })
}

// isValueError reports whether err is PostgreSQL refusing a value of the
// batch that the completion itself carries: retrying the same values cannot
// help, so the batch is split to find and terminate the culprit. The codes
// are the ones a valid completion can still cause: jsonb refusing "\u0000"
// (22P05) or a number or nesting beyond its limits (22003, 54000, 54001), a
// character the database encoding lacks (22021), a timestamp out of range
// (22008). Anything else, constraint violations and invalid input for a
// column's type included, points at the table (a changed column or
// constraint) rather than the message: the batch is kept and retried, so no
// completion is dropped while an operator fixes it.
func isValueError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "22P05", "22003", "22021", "22008", "54000", "54001":
		return true
	}
	return false
}
