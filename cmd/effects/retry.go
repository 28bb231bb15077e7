package main

import (
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// retryCmd re-runs effects without Hasura (operator.Store.Rerun: a new
// effect message per row, the re-run recorded on the row). Exit codes: 0 every re-run
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

	store := o.store(conn)
	selected := *status != ""
	if selected {
		var err error
		ids, err = store.FailedIDs(ctx, *kind, *since, *limit, false)
		if err != nil {
			return o.fail(1, "%v", err)
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

	results := make([]operator.RetryResult, 0, len(ids))
	failed := 0
	keys := operator.RerunKeys{}
	for _, id := range ids {
		res := store.Rerun(ctx, js, maxPayload, id, operator.RerunOptions{By: *by, DryRun: *dryRun, Selected: selected, Keys: keys})
		if res.Outcome == operator.RetryError {
			failed++
		}
		results = append(results, res)
		if ctx.Err() != nil {
			break
		}
	}
	if *asJSON {
		if code := writeJSON(o, stdout, struct {
			DryRun  bool                   `json:"dry_run"`
			Results []operator.RetryResult `json:"results"`
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
