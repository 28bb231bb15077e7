package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// retryResult is the outcome of a re-run asked for one effect.
type retryResult struct {
	ID     string `json:"id"`
	Kind   string `json:"kind,omitempty"`
	Status string `json:"status,omitempty"` // the row's status when asked
	// Outcome is "retried", "would retry" (--dry-run), "skipped" (a row
	// that succeeded since it was selected) or "error".
	Outcome  string `json:"outcome"`
	MsgID    string `json:"msg_id,omitempty"`
	Sequence uint64 `json:"sequence,omitempty"`
	Error    string `json:"error,omitempty"`
}

// retryCmd re-runs effects without Hasura: for each row it publishes a new
// effect message on "effects.<kind>", built by the ingest's builder, with a
// dedupe id of its own ("retry:<row id>:<uuid>") so JetStream stores it
// even within the duplicate window of the first run, and records on the row
// when the re-run was asked and by whom. The completer writes the outcome as
// for any run: a success replaces the failure. Exit codes: 0 every re-run
// published (or listed, --dry-run), 1 some effect could not be re-run or
// the database or NATS failed, 2 bad arguments or settings.
func retryCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("effects retry", flag.ContinueOnError)
	fs.SetOutput(stderr)
	status := fs.String("status", "", "re-run every row with this status (only failed), filtered by --kind and --since, instead of IDs")
	kind := fs.String("kind", "", "with --status: only rows of this kind")
	since := fs.Duration("since", 0, "with --status: only rows created in this last span (e.g. 24h); 0: any age")
	limit := fs.Int("limit", 1000, "with --status: at most this many rows, oldest first (1 to 100000)")
	dryRun := fs.Bool("dry-run", false, "list what would be re-run; publish and change nothing")
	by := fs.String("by", "", "who asks (recorded on the row as rerun_requested_by)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: effects retry [--by NAME] [--dry-run] [--json] ID...\n"+
			"       effects retry --status failed [--kind K] [--since D] [--limit N] [--by NAME] [--dry-run] [--json]\n\n"+
			"Re-runs effects without Hasura: publishes a new effect message for each row on\n"+
			"effects.<kind> (NATS_URL) and records on the row when and by whom it was asked. A\n"+
			"success replaces the failure. Succeeded rows are never re-run.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	name := "effects retry"
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, name+": "+format+"\n", a...)
		return 2
	}
	ids := fs.Args()
	switch {
	case *status == "" && len(ids) == 0:
		return bad("name effect ids, or select rows with --status failed")
	case *status != "" && len(ids) > 0:
		return bad("give effect ids or --status, not both")
	case *status != "" && *status != string(effects.StatusFailed):
		return bad("--status %q: only failed rows are re-run by selection (name a stuck pending row by its id)", *status)
	case *status == "" && (*kind != "" || *since != 0):
		return bad("--kind and --since select rows with --status failed")
	case *since < 0:
		return bad("--since %s: want a positive duration such as 24h", *since)
	case *limit < 1 || *limit > 100000:
		return bad("--limit %d: want 1 to 100000", *limit)
	}
	if *kind != "" {
		if err := effects.ValidateKind(*kind); err != nil {
			return bad("--kind: %v", err)
		}
	}
	for _, id := range ids {
		if !effects.IsUUID(id) {
			return bad("%q is not an effect id (a UUID)", id)
		}
	}
	o, ctx, conn, done, code := openOncall(name, stderr)
	if code != 0 {
		return code
	}
	defer done()

	selected := *status != ""
	if selected {
		var err error
		ids, err = failedIDs(ctx, conn, o, *kind, *since, *limit)
		if err != nil {
			return o.fail(1, "%v", explainQueryError(err))
		}
	}
	var js jetstream.JetStream
	var maxPayload int64
	if !*dryRun && len(ids) > 0 {
		natsURL := o.natsURL
		if natsURL == "" {
			natsURL = settings.DefaultNATSURL
		}
		nc, j, err := connectNATS(natsURL)
		if err != nil {
			return o.fail(1, "%v", err)
		}
		defer nc.Close()
		js, maxPayload = j, nc.MaxPayload()
	}

	results := make([]retryResult, 0, len(ids))
	failed := 0
	keys := keysRerun{}
	for _, id := range ids {
		res := rerun(ctx, conn, o, js, maxPayload, keys, id, *by, *dryRun, selected)
		if res.Outcome == "error" {
			failed++
		}
		results = append(results, res)
		if ctx.Err() != nil {
			break
		}
	}
	if *asJSON {
		if code := writeJSON(o, stdout, struct {
			DryRun  bool          `json:"dry_run"`
			Results []retryResult `json:"results"`
		}{*dryRun, results}); code != 0 {
			return code
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tSTATUS\tOUTCOME\tDETAIL")
		for _, r := range results {
			detail := r.MsgID
			if r.Error != "" {
				detail = r.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, orDash(r.Kind), orDash(r.Status), r.Outcome, orDash(detail))
		}
		_ = tw.Flush()
		if len(results) == 0 {
			fmt.Fprintln(stderr, "no effects match")
		}
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "%s: %d of %d effects could not be re-run\n", name, failed, len(results))
		return 1
	}
	return 0
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// failedIDs selects failed rows, oldest first.
func failedIDs(ctx context.Context, conn *pgx.Conn, o *oncall, kind string, since time.Duration, limit int) ([]string, error) {
	var sinceArg *time.Duration
	if since > 0 {
		sinceArg = &since
	}
	rows, err := conn.Query(ctx, `SELECT id::text FROM `+o.table.Quoted()+`
	       WHERE status = 'failed'
	         AND ($1::text IS NULL OR kind = $1)
	         AND ($2::interval IS NULL OR created_at >= now() - $2::interval)
	       ORDER BY created_at, id
	       LIMIT $3`, nullIfEmpty(kind), sinceArg, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// keysRerun are the keys of the effects this command has re-run (or would
// re-run, --dry-run), by kind and key, with the effect's id.
type keysRerun map[[2]string]string

// rerun re-runs one effect in a transaction that holds the row: the row is
// marked, the message published, then the mark committed, so a re-run that
// could not be published leaves no record, and a row removed meanwhile is
// reported as gone.
func rerun(ctx context.Context, conn *pgx.Conn, o *oncall, js jetstream.JetStream, maxPayload int64,
	keys keysRerun, id, by string, dryRun, selected bool) retryResult {
	res := retryResult{ID: id, Outcome: "error"}
	fail := func(err error) retryResult {
		res.Error = err.Error()
		return res
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fail(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var kind, dedupe string
	var key *string
	var payload []byte
	var createdAt pgtype.Timestamptz // 'infinity' would fail a time.Time scan
	err = tx.QueryRow(ctx, `SELECT kind, key, status, payload::text, created_at, gen_random_uuid()::text FROM `+o.table.Quoted()+
		` WHERE id = $1 FOR UPDATE`, id).Scan(&kind, &key, &res.Status, &payload, &createdAt, &dedupe)
	if errors.Is(err, pgx.ErrNoRows) {
		return fail(retention.Gone(o.table.String(), id, o.policy))
	}
	if err != nil {
		return fail(explainQueryError(err))
	}
	res.Kind = kind
	if res.Status == string(effects.StatusSucceeded) {
		if selected {
			res.Outcome = "skipped"
			res.Error = "succeeded since it was selected"
			return res
		}
		return fail(errors.New("it succeeded; a success is final and is not re-run (insert a new row to run the effect again)"))
	}
	if res.Status == string(effects.StatusCancelled) {
		return fail(errors.New("it was cancelled; a cancel is final and is not re-run (insert a new row to run the effect again)"))
	}
	if err := effects.ValidateKind(kind); err != nil {
		return fail(fmt.Errorf("it cannot run: %w", err))
	}
	if key != nil {
		if why, err := keyBusy(ctx, tx, o, keys, id, kind, *key); err != nil {
			return fail(explainQueryError(err))
		} else if why != "" {
			if selected {
				res.Outcome = "skipped"
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
	res.MsgID = "retry:" + id + ":" + dedupe
	msg := ingest.EffectMsg(id, kind, payload, created, res.MsgID)
	if err := effects.CheckSize(msg, maxPayload); err != nil {
		res.MsgID = ""
		return fail(err)
	}
	if dryRun {
		res.MsgID = ""
		res.Outcome = "would retry"
		keys.add(kind, key, id)
		return res
	}
	var byArg *string
	if by != "" {
		byArg = &by
	}
	if _, err := tx.Exec(ctx, `UPDATE `+o.table.Quoted()+` SET rerun_requested_at = now(), rerun_requested_by = $2 WHERE id = $1`,
		id, byArg); err != nil {
		res.MsgID = ""
		return fail(explainQueryError(err))
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ack, err := js.PublishMsg(pctx, msg)
	cancel()
	if err != nil {
		res.MsgID = ""
		return fail(fmt.Errorf("publish to %s: %w", msg.Subject, err))
	}
	res.Sequence = ack.Sequence
	keys.add(kind, key, id)
	if err := tx.Commit(ctx); err != nil {
		return fail(fmt.Errorf("published as %s, but recording the re-run on the row failed: %w", res.MsgID, err))
	}
	res.Outcome = "retried"
	return res
}

// keyBusy says why an effect with a key is not re-run ("" when it may be):
// a key allows one pending effect at a time, and a re-run of a failed row
// (which stays failed until its outcome is written) would run beside the
// pending effect that holds the key, or beside another re-run of the key by
// this command. The check is a look, not a lock: an insert of the key just
// after it is not refused.
func keyBusy(ctx context.Context, tx pgx.Tx, o *oncall, keys keysRerun, id, kind, key string) (string, error) {
	if other, ok := keys[[2]string{kind, key}]; ok {
		return fmt.Sprintf("key %s of kind %s: effect %s with the same key is re-run by this command; one effect of a key runs at a time", quoteKey(key), kind, other), nil
	}
	var holder string
	err := tx.QueryRow(ctx, `SELECT id::text FROM `+o.table.Quoted()+
		` WHERE kind = $1 AND key = $2 AND status = 'pending' AND id <> $3 LIMIT 1`, kind, key, id).Scan(&holder)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", nil
	case err != nil:
		return "", err
	}
	return fmt.Sprintf("key %s of kind %s is held by pending effect %s; a re-run now would run beside it (re-run this one once that one is final)", quoteKey(key), kind, holder), nil
}

func (k keysRerun) add(kind string, key *string, id string) {
	if key != nil {
		k[[2]string{kind, *key}] = id
	}
}

// quoteKey shows a key in a message: quoted, cut to 64 bytes.
func quoteKey(key string) string { return fmt.Sprintf("%.64q", key) }
