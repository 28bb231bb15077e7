// Package control pauses and resumes kinds and cancels effects: the
// operator controls behind `effects pause`, `effects resume`, `effects
// cancel` and the console's buttons, which call the same [Controller].
//
// PostgreSQL is the truth: a kind is paused while its row in
// "<table>_paused" says so, an effect is cancelled when its row's status is
// 'cancelled'. The dispatchers do not read PostgreSQL; they watch a copy in
// the JetStream key-value bucket EFFECTS_CONTROL (internal/controlkv). Every
// change is therefore made in three steps: PostgreSQL (committed), then the
// bucket, then a wait until every dispatcher confirmed it applied the change
// ([controlkv.Confirm]). When a change returns confirmed, no dispatcher
// starts an attempt of a paused kind or of a cancelled effect any more, and
// the attempts of a cancelled effect that were running have had their
// context cancelled. A change that PostgreSQL took but the bucket or the
// dispatchers did not is reported as not confirmed: the completer copies it
// to the bucket within seconds of NATS being back ([Syncer]).
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/controlkv"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// DB is what the controls need of PostgreSQL: *pgx.Conn, *pgxpool.Pool and
// *pgxpool.Conn have it.
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Options tune a [Controller].
type Options struct {
	// Wait bounds how long a change waits for every dispatcher to confirm
	// it; default 1m. A dispatcher that died keeps its watcher for up to
	// controlkv.WatcherInactiveThreshold plus a pull expiry, which the
	// default covers.
	Wait time.Duration
	// Streams are the stream settings (EFFECTS_STREAM_MAX_AGE,
	// EFFECTS_STREAM_REPLICAS): the bucket, when it has to be created,
	// gets the streams' max age and replicas.
	Streams effects.StreamOptions
	// Logger; nil logs nothing.
	Logger *slog.Logger
}

// DefaultWait is [Options.Wait]'s default.
const DefaultWait = time.Minute

// Controller makes the control changes on one effects table.
type Controller struct {
	db    DB
	js    jetstream.JetStream
	table schema.Table
	o     Options
}

// New returns a controller of table, writing through db and js. js may be
// nil for a controller that only reads ([Controller.Pauses]).
func New(db DB, js jetstream.JetStream, table schema.Table, o Options) *Controller {
	if o.Wait <= 0 {
		o.Wait = DefaultWait
	}
	o.Streams = o.Streams.WithDefaults()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Controller{db: db, js: js, table: table, o: o}
}

// Outcome is what a control did to one kind or effect.
type Outcome string

// Outcomes. The first six are success (the kind or effect is in the state
// asked for); the others are not.
const (
	OutcomePaused           Outcome = "paused"
	OutcomeAlreadyPaused    Outcome = "already paused"
	OutcomeResumed          Outcome = "resumed"
	OutcomeNotPaused        Outcome = "not paused"
	OutcomeCancelled        Outcome = "cancelled"
	OutcomeAlreadyCancelled Outcome = "already cancelled"
	// OutcomeRefused: the effect is succeeded or failed (final) and was
	// left as it is; Error names its status.
	OutcomeRefused Outcome = "refused"
	// OutcomeNotFound: no row has the id.
	OutcomeNotFound Outcome = "not found"
)

// OK reports whether the kind or effect is in the state asked for.
func (o Outcome) OK() bool {
	switch o {
	case OutcomePaused, OutcomeAlreadyPaused, OutcomeResumed, OutcomeNotPaused, OutcomeCancelled, OutcomeAlreadyCancelled:
		return true
	}
	return false
}

// Result is what a control did to one kind (pause, resume) or one effect
// (cancel).
type Result struct {
	Kind string `json:"kind,omitempty"`
	ID   string `json:"id,omitempty"`
	// Status is, for a cancel, the row's status before it (pending,
	// cancelled, succeeded, failed; empty when there is no row).
	Status  string  `json:"status,omitempty"`
	Outcome Outcome `json:"outcome"`
	// By and At are who asked and when PostgreSQL recorded it: the pause
	// in force, the resume, the cancel (for "already ..." outcomes, the
	// earlier one's).
	By *string    `json:"by"`
	At *time.Time `json:"at,omitempty"`
	// Error says why the outcome is not OK.
	Error string `json:"error,omitempty"`
}

// Report is what one Pause, Resume or Cancel did.
type Report struct {
	Results []Result `json:"results"`
	// Confirmed: every dispatcher applied the changes (also true when
	// nothing needed telling them). Revision is the bucket's revision
	// they confirmed.
	Confirmed bool   `json:"confirmed"`
	Revision  uint64 `json:"revision,omitempty"`
	// Dispatchers is how many dispatchers confirmed; Waiting names those
	// that had not when the wait ended.
	Dispatchers int      `json:"dispatchers"`
	Waiting     []string `json:"waiting,omitempty"`
	// Error says why the changes, recorded in PostgreSQL, were not
	// confirmed (NATS unreachable, the wait ran out).
	Error string `json:"error,omitempty"`
}

// OK reports whether every result is OK and the dispatchers confirmed.
func (r Report) OK() bool {
	for _, res := range r.Results {
		if !res.Outcome.OK() {
			return false
		}
	}
	return r.Confirmed
}

// ErrInvalid is wrapped by the error for a kind or id that cannot be one;
// nothing was changed.
var ErrInvalid = errors.New("invalid")

// Pause pauses kinds: their effects are still accepted and stay pending,
// and no dispatcher starts an attempt of them until they are resumed.
// Attempts already running finish. by (may be empty) is recorded as who
// asked. An invalid kind is an error wrapping [ErrInvalid] and changes
// nothing; so does a failure of PostgreSQL.
func (c *Controller) Pause(ctx context.Context, kinds []string, by string) (Report, error) {
	results, err := c.perKind(ctx, "pause", kinds, func(tx pgx.Tx, r *Result) error {
		r.Outcome = OutcomePaused
		err := tx.QueryRow(ctx, `INSERT INTO `+c.table.PausedTable().Quoted()+` AS p (kind, paused, paused_at, paused_by)
		      VALUES ($1, true, now(), $2)
		      ON CONFLICT (kind) DO UPDATE SET paused = true, paused_at = now(), paused_by = $2 WHERE NOT p.paused
		      RETURNING paused_at, paused_by`, r.Kind, nullIfEmpty(by)).Scan(&r.At, &r.By)
		if errors.Is(err, pgx.ErrNoRows) {
			r.Outcome = OutcomeAlreadyPaused
			err = tx.QueryRow(ctx, `SELECT paused_at, paused_by FROM `+c.table.PausedTable().Quoted()+` WHERE kind = $1`, r.Kind).Scan(&r.At, &r.By)
		}
		return err
	})
	if err != nil {
		return Report{}, err
	}
	return c.tellEach(ctx, results, func(kv jetstream.KeyValue, r Result) error {
		_, err := kv.Put(ctx, controlkv.PausedKey(r.Kind), mark(r).Encode())
		return err
	}), nil
}

// Resume resumes kinds: their pending effects run again. by (may be
// empty) is recorded as who asked. A kind that is not paused is left as it
// is (OutcomeNotPaused).
func (c *Controller) Resume(ctx context.Context, kinds []string, by string) (Report, error) {
	results, err := c.perKind(ctx, "resume", kinds, func(tx pgx.Tx, r *Result) error {
		r.Outcome = OutcomeResumed
		err := tx.QueryRow(ctx, `UPDATE `+c.table.PausedTable().Quoted()+`
		       SET paused = false, resumed_at = now(), resumed_by = $2
		     WHERE kind = $1 AND paused
		     RETURNING resumed_at, resumed_by`, r.Kind, nullIfEmpty(by)).Scan(&r.At, &r.By)
		if errors.Is(err, pgx.ErrNoRows) {
			r.Outcome, err = OutcomeNotPaused, nil
		}
		return err
	})
	if err != nil {
		return Report{}, err
	}
	// Also for kinds found not paused: the bucket may still say so.
	return c.tellEach(ctx, results, func(kv jetstream.KeyValue, r Result) error {
		if err := kv.Delete(ctx, controlkv.PausedKey(r.Kind)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
		return nil
	}), nil
}

// Cancel cancels pending effects: each row becomes 'cancelled' (a final
// status; cancelled_at, cancelled_by and completed_at are set) and no
// dispatcher starts an attempt of it any more, including one waiting for a
// retry and an async effect held for its completion (released). An attempt
// running when the cancel reaches its dispatcher has its handler's context
// cancelled; what the handler already did stays done, its result is not
// recorded and the row stays cancelled. A succeeded or failed effect is
// refused (OutcomeRefused, naming its status) and left as it is. A
// malformed id is an error wrapping [ErrInvalid]; nothing is changed.
func (c *Controller) Cancel(ctx context.Context, ids []string, by string) (Report, error) {
	ids, err := checkIDs(ids)
	if err != nil {
		return Report{}, err
	}
	byID := map[string]*Result{}
	err = c.inTx(ctx, func(tx pgx.Tx) error {
		clear(byID)
		rows, err := tx.Query(ctx, `UPDATE `+c.table.Quoted()+`
		       SET status = 'cancelled', cancelled_at = now(), cancelled_by = $2, completed_at = now()
		     WHERE id = ANY($1::uuid[]) AND status = 'pending'
		     RETURNING id::text, kind, cancelled_at, cancelled_by`, ids, nullIfEmpty(by))
		if err != nil {
			return err
		}
		var r Result
		_, err = pgx.ForEachRow(rows, []any{&r.ID, &r.Kind, &r.At, &r.By}, func() error {
			res := r
			res.Status, res.Outcome = string(effects.StatusPending), OutcomeCancelled
			byID[r.ID] = &res
			return nil
		})
		if err != nil {
			return err
		}
		var rest []string
		for _, id := range ids {
			if byID[id] == nil {
				rest = append(rest, id)
			}
		}
		if len(rest) == 0 {
			return nil
		}
		rows, err = tx.Query(ctx, `SELECT id::text, kind, status, cancelled_at, cancelled_by FROM `+c.table.Quoted()+
			` WHERE id = ANY($1::uuid[])`, rest)
		if err != nil {
			return err
		}
		_, err = pgx.ForEachRow(rows, []any{&r.ID, &r.Kind, &r.Status, &r.At, &r.By}, func() error {
			res := r
			if res.Status == string(effects.StatusCancelled) {
				res.Outcome = OutcomeAlreadyCancelled
			} else {
				res.Outcome, res.At, res.By = OutcomeRefused, nil, nil
				res.Error = fmt.Sprintf("it is %s: only a pending effect can be cancelled", res.Status)
			}
			byID[r.ID] = &res
			return nil
		})
		return err
	})
	if err != nil {
		return Report{}, c.dbError("cancel", err)
	}
	results := make([]Result, 0, len(ids))
	for _, id := range ids {
		r := byID[id]
		if r == nil {
			r = &Result{ID: id, Outcome: OutcomeNotFound, Error: fmt.Sprintf("no effect %s in %s", id, c.table)}
		}
		results = append(results, *r)
	}
	return c.tellEach(ctx, results, func(kv jetstream.KeyValue, r Result) error {
		// A kind no dispatcher can have (invalid: the ingest fails such
		// rows) needs no key.
		if (r.Outcome == OutcomeCancelled || r.Outcome == OutcomeAlreadyCancelled) && effects.ValidateKind(r.Kind) == nil {
			_, err := kv.Put(ctx, controlkv.CancelledKey(r.Kind, r.ID), mark(r).Encode())
			return err
		}
		return nil
	}), nil
}

// KindState is a kind's row in the paused-kinds table.
type KindState struct {
	Kind      string     `json:"kind"`
	Paused    bool       `json:"paused"`
	PausedAt  *time.Time `json:"paused_at,omitempty"`
	PausedBy  *string    `json:"paused_by,omitempty"`
	ResumedAt *time.Time `json:"resumed_at,omitempty"`
	ResumedBy *string    `json:"resumed_by,omitempty"`
}

// Kinds returns every kind ever paused, by name: whether it is paused now,
// and its last pause and resume. PostgreSQL's word, not the dispatchers'.
func (c *Controller) Kinds(ctx context.Context) ([]KindState, error) {
	rows, err := c.db.Query(ctx, `SELECT kind, paused, paused_at, paused_by, resumed_at, resumed_by FROM `+
		c.table.PausedTable().Quoted()+` ORDER BY kind`)
	if err != nil {
		return nil, c.dbError("read paused kinds", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (KindState, error) {
		var k KindState
		err := r.Scan(&k.Kind, &k.Paused, &k.PausedAt, &k.PausedBy, &k.ResumedAt, &k.ResumedBy)
		return k, err
	})
	if err != nil {
		return nil, c.dbError("read paused kinds", err)
	}
	if out == nil {
		out = []KindState{}
	}
	return out, nil
}

// tellEach writes each result's change to the bucket with write, waits
// for the dispatchers (tell), and logs the changes made.
func (c *Controller) tellEach(ctx context.Context, results []Result, write func(jetstream.KeyValue, Result) error) Report {
	rep := Report{Results: results}
	c.tell(ctx, &rep, func(kv jetstream.KeyValue) error {
		for _, r := range results {
			if err := write(kv, r); err != nil {
				return err
			}
		}
		return nil
	})
	for _, r := range results {
		switch r.Outcome {
		case OutcomePaused, OutcomeResumed, OutcomeCancelled:
			c.o.Logger.Info("operator control", "change", r.Outcome, "kind", r.Kind, "effect_id", r.ID, "by", deref(r.By), "confirmed", rep.Confirmed)
		}
	}
	return rep
}

// tell writes the changes to the bucket (filling it again from PostgreSQL
// first when it is missing) and waits for the dispatchers to confirm,
// recording the outcome in rep.
func (c *Controller) tell(ctx context.Context, rep *Report, write func(jetstream.KeyValue) error) {
	if c.js == nil {
		rep.Error = "no NATS connection: the dispatchers were not told"
		return
	}
	wctx, cancel := context.WithTimeout(ctx, c.o.Wait)
	defer cancel()
	kv, err := c.js.KeyValue(wctx, controlkv.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		// The bucket is gone: fill a new one from PostgreSQL, which
		// already holds this change.
		c.o.Logger.Warn("control bucket missing; creating it again from PostgreSQL", "bucket", controlkv.Bucket)
		s := NewSyncer(c.db, c.js, c.table, SyncOptions{Streams: c.o.Streams, Logger: c.o.Logger})
		_, err = s.Once(wctx)
	} else if err == nil {
		err = write(kv)
	}
	if err != nil {
		rep.Error = fmt.Sprintf("recorded in PostgreSQL, but not written to the bucket %s: %v (the completer copies it there once NATS is back)", controlkv.Bucket, err)
		return
	}
	st, err := c.js.Stream(wctx, controlkv.Stream)
	if err != nil {
		rep.Error = fmt.Sprintf("recorded, but the bucket %s could not be read back: %v", controlkv.Bucket, err)
		return
	}
	// Waiting for the bucket's last revision covers this change's writes
	// (and perhaps others').
	rep.Revision = st.CachedInfo().State.LastSeq
	conf, err := controlkv.Confirm(wctx, c.js, rep.Revision)
	rep.Dispatchers, rep.Waiting = conf.Confirmed, conf.Waiting
	if err != nil {
		rep.Error = fmt.Sprintf("recorded, but not confirmed by every dispatcher within %s: %v", c.o.Wait, err)
		return
	}
	rep.Confirmed = true
}

// perKind checks kinds and runs change for each in one transaction: all
// or nothing.
func (c *Controller) perKind(ctx context.Context, what string, kinds []string, change func(pgx.Tx, *Result) error) ([]Result, error) {
	kinds, err := checkKinds(kinds)
	if err != nil {
		return nil, err
	}
	var results []Result
	err = c.inTx(ctx, func(tx pgx.Tx) error {
		results = results[:0]
		for _, kind := range kinds {
			r := Result{Kind: kind}
			if err := change(tx, &r); err != nil {
				return err
			}
			results = append(results, r)
		}
		return nil
	})
	if err != nil {
		return nil, c.dbError(what, err)
	}
	return results, nil
}

func (c *Controller) inTx(ctx context.Context, f func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, c.db, f)
}

func (c *Controller) dbError(what string, err error) error {
	if isUndefined(err) {
		return fmt.Errorf("%s on %s: %w (is the table migrated to this version? run `completer migrate`)", what, c.table, err)
	}
	return fmt.Errorf("%s on %s: %w", what, c.table, err)
}

// isUndefined: a table or column this version's migrations add is missing.
func isUndefined(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42703")
}

func checkKinds(kinds []string) ([]string, error) {
	if len(kinds) == 0 {
		return nil, fmt.Errorf("no kind given: %w", ErrInvalid)
	}
	out := make([]string, 0, len(kinds))
	seen := map[string]bool{}
	for _, k := range kinds {
		if err := effects.ValidateKind(k); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out, nil
}

func checkIDs(ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("no effect id given: %w", ErrInvalid)
	}
	out := make([]string, 0, len(ids))
	seen := map[string]bool{}
	for _, id := range ids {
		if !effects.IsUUID(id) {
			return nil, fmt.Errorf("%.80q is not an effect id (a UUID): %w", id, ErrInvalid)
		}
		id = strings.ToLower(id) // as PostgreSQL writes it, and the effect messages carry it
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out, nil
}

func mark(r Result) controlkv.Mark {
	m := controlkv.Mark{By: deref(r.By)}
	if r.At != nil {
		m.At = *r.At
	}
	return m
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
