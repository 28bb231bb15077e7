package operator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/pkg/effects"
)

// Outcomes of a re-run ([RetryResult.Outcome]).
const (
	Retried    = "retried"
	WouldRetry = "would retry" // a dry run
	Skipped    = "skipped"     // a selected row that succeeded since, or whose key is busy
	// Waiting: a scheduled effect whose run_at is still ahead; it is not
	// published now, the scheduler publishes it then (a re-run keeps the
	// effect's time).
	Waiting    = "waiting"
	RetryError = "error"
)

// RetryResult is the outcome of a re-run asked for one effect.
type RetryResult struct {
	ID     string `json:"id"`
	Kind   string `json:"kind,omitempty"`
	Status string `json:"status,omitempty"` // the row's status when asked
	// Outcome is Retried, WouldRetry, Skipped or RetryError.
	Outcome  string `json:"outcome"`
	MsgID    string `json:"msg_id,omitempty"`
	Sequence uint64 `json:"sequence,omitempty"`
	Error    string `json:"error,omitempty"`
}

// RerunOptions say how [Store.Rerun] runs.
type RerunOptions struct {
	// By is who asks, recorded on the row as rerun_requested_by ("" records
	// NULL).
	By string
	// DryRun checks everything and publishes and changes nothing.
	DryRun bool
	// Selected says the id was chosen by a selection ([Store.FailedIDs]),
	// so a row that succeeded since, or whose key is busy, is skipped
	// rather than an error.
	Selected bool
	// Keys are the keys re-run so far by the same command or action, which
	// Rerun adds to: of several failed effects of one key, one is re-run.
	// nil remembers nothing (the table is still looked at).
	Keys RerunKeys
}

// RerunKeys are the keys of the effects re-run (or that would be, a dry
// run) by one command or action, by kind and key, with the effect's id.
type RerunKeys map[[2]string]string

func (k RerunKeys) add(kind string, key *string, id string) {
	if k != nil && key != nil {
		k[[2]string{kind, *key}] = id
	}
}

// FailedIDs selects up to limit failed rows, oldest first, of kind ("" for
// any) created in the last since (0: any age). With skipRerunning, rows
// whose re-run was asked in the last hour and after their last completion
// (it has not completed yet) are left out, so that asking again takes the
// next rows rather than the same ones twice. (Past an hour such a re-run is
// taken as lost; and the hour absorbs a dispatcher clock behind the
// database's, which would date the re-run's completion before its ask.)
func (s Store) FailedIDs(ctx context.Context, kind string, since time.Duration, limit int, skipRerunning bool) ([]string, error) {
	var sinceArg *time.Duration
	if since > 0 {
		sinceArg = &since
	}
	rows, err := s.DB.Query(ctx, `SELECT id::text FROM `+s.Table.Quoted()+`
	       WHERE status = 'failed'
	         AND ($1::text IS NULL OR kind = $1)
	         AND ($2::interval IS NULL OR created_at >= now() - $2::interval)
	         AND NOT ($4 AND COALESCE(rerun_requested_at > now() - interval '1 hour'
	                  AND (completed_at IS NULL OR rerun_requested_at > completed_at), false))
	       ORDER BY created_at, id
	       LIMIT $3`, nullIfEmpty(kind), sinceArg, limit, skipRerunning)
	if err != nil {
		return nil, ExplainQueryError(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	return ids, ExplainQueryError(err)
}

// Rerun re-runs effect id without Hasura: it publishes a new effect message
// on "effects.<kind>" with js, built by the ingest's builder, with a dedupe
// id of its own ("retry:<row id>:<uuid>") so JetStream stores it even within
// the duplicate window of the first run, and records on the row when the
// re-run was asked and by whom. The completer writes the outcome as for any
// run: a success replaces the failure. maxPayload is the NATS server's
// limit (nats.Conn.MaxPayload); js may be nil for a dry run.
//
// It runs in a transaction that holds the row: the row is marked, the
// message published, then the mark committed, so a re-run that could not
// be published leaves no record, and a row removed meanwhile is reported as
// gone. A succeeded or cancelled row is never re-run, nor a row with a key
// while another pending row of its kind holds the key (or o.Keys has it).
func (s Store) Rerun(ctx context.Context, js jetstream.JetStream, maxPayload int64, id string, o RerunOptions) RetryResult {
	res := RetryResult{ID: id, Outcome: RetryError}
	fail := func(err error) RetryResult {
		res.Error = err.Error()
		return res
	}
	tx, err := s.DB.Begin(ctx)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var kind, dedupe string
	var key *string
	var payload []byte
	var createdAt, runAt pgtype.Timestamptz // 'infinity' would fail a time.Time scan
	var waiting, unpublished bool
	err = tx.QueryRow(ctx, `SELECT kind, key, status, payload::text, created_at, gen_random_uuid()::text, run_at,
	       coalesce(run_at > created_at AND run_at > now(), false), published_at IS NULL FROM `+s.Table.Quoted()+
		` WHERE id = $1 FOR UPDATE`, id).Scan(&kind, &key, &res.Status, &payload, &createdAt, &dedupe, &runAt, &waiting, &unpublished)
	if errors.Is(err, pgx.ErrNoRows) {
		return fail(retention.Gone(s.Table.String(), id, s.Retention))
	}
	if err != nil {
		return fail(ExplainQueryError(err))
	}
	res.Kind = kind
	if res.Status == string(effects.StatusSucceeded) {
		if o.Selected {
			res.Outcome = Skipped
			res.Error = "succeeded since it was selected"
			return res
		}
		return fail(errors.New("it succeeded; a success is final and is not re-run (insert a new row to run the effect again)"))
	}
	if res.Status == string(effects.StatusCancelled) {
		// The completer leaves a cancelled row as it is, so a re-run's
		// outcome would never be recorded.
		return fail(errors.New("it was cancelled; a cancel is final and is not re-run (insert a new row to run the effect again)"))
	}
	if err := effects.ValidateKind(kind); err != nil {
		return fail(fmt.Errorf("it cannot run: %w", err))
	}
	if key != nil {
		if why, err := s.keyBusy(ctx, tx, o.Keys, id, kind, *key); err != nil {
			return fail(ExplainQueryError(err))
		} else if why != "" {
			if o.Selected {
				res.Outcome = Skipped
				res.Error = why
				return res
			}
			return fail(errors.New(why))
		}
	}
	created, reason := ingest.CarriedCreatedAt(createdAt)
	if reason != "" {
		return fail(fmt.Errorf("it cannot run: %s", reason))
	}
	if waiting {
		// A re-run keeps the effect's time: one still ahead is left to the
		// scheduler instead of being published now.
		return s.rerunLater(ctx, tx, res, id, o, unpublished)
	}
	res.MsgID = "retry:" + id + ":" + dedupe
	carried := ingest.CarriedRunAt(runAt)
	if !ingest.Scheduled(created, carried) {
		carried = time.Time{}
	}
	msg := ingest.EffectMsgAt(id, kind, payload, created, carried, res.MsgID)
	if err := effects.CheckSize(msg, maxPayload); err != nil {
		res.MsgID = ""
		return fail(err)
	}
	if o.DryRun {
		res.MsgID = ""
		res.Outcome = WouldRetry
		o.Keys.add(kind, key, id)
		return res
	}
	if _, err := tx.Exec(ctx, `UPDATE `+s.Table.Quoted()+` SET rerun_requested_at = now(), rerun_requested_by = $2 WHERE id = $1`,
		id, nullIfEmpty(o.By)); err != nil {
		res.MsgID = ""
		return fail(ExplainQueryError(err))
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ack, err := js.PublishMsg(pctx, msg)
	cancel()
	if err != nil {
		res.MsgID = ""
		return fail(fmt.Errorf("publish to %s: %w", msg.Subject, err))
	}
	res.Sequence = ack.Sequence
	o.Keys.add(kind, key, id)
	if err := tx.Commit(ctx); err != nil {
		return fail(fmt.Errorf("published as %s, but recording the re-run on the row failed: %w", res.MsgID, err))
	}
	res.Outcome = Retried
	return res
}

// rerunLater re-runs a scheduled effect whose run_at is still ahead: it is
// not published now, which would run it early. A pending row that was not
// published yet is waiting already and is left as it is; a failed one (or a
// pending one published before its time was moved) is made to wait again:
// pending, not published, so the scheduler publishes it at its run_at. The
// re-run is recorded on the row as for any re-run.
func (s Store) rerunLater(ctx context.Context, tx pgx.Tx, res RetryResult, id string, o RerunOptions, unpublished bool) RetryResult {
	res.Outcome = Waiting
	if o.DryRun || res.Status == string(effects.StatusPending) && unpublished {
		return res
	}
	if _, err := tx.Exec(ctx, `UPDATE `+s.Table.Quoted()+` SET status = 'pending', published_at = NULL,
	       rerun_requested_at = now(), rerun_requested_by = $2 WHERE id = $1`, id, nullIfEmpty(o.By)); err != nil {
		res.Outcome, res.Error = RetryError, ExplainQueryError(err).Error()
		return res
	}
	if err := tx.Commit(ctx); err != nil {
		res.Outcome, res.Error = RetryError, err.Error()
	}
	return res
}

// keyBusy says why an effect with a key is not re-run ("" when it may be):
// a key allows one pending effect at a time, and a re-run of a failed row
// (which stays failed until its outcome is written) would run beside the
// pending effect that holds the key, or beside another re-run of the key by
// the same command. The check is a look, not a lock: an insert of the key
// just after it is not refused.
func (s Store) keyBusy(ctx context.Context, tx pgx.Tx, keys RerunKeys, id, kind, key string) (string, error) {
	if other, ok := keys[[2]string{kind, key}]; ok {
		return fmt.Sprintf("key %s of kind %s: effect %s with the same key is re-run by this command; one effect of a key runs at a time", quoteKey(key), kind, other), nil
	}
	var holder string
	err := tx.QueryRow(ctx, `SELECT id::text FROM `+s.Table.Quoted()+
		` WHERE kind = $1 AND key = $2 AND status = 'pending' AND id <> $3 LIMIT 1`, kind, key, id).Scan(&holder)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", nil
	case err != nil:
		return "", err
	}
	return fmt.Sprintf("key %s of kind %s is held by pending effect %s; a re-run now would run beside it (re-run this one once that one is final)", quoteKey(key), kind, holder), nil
}

// quoteKey shows a key in a message: quoted, cut to 64 bytes.
func quoteKey(key string) string { return fmt.Sprintf("%.64q", key) }
