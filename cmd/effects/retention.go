package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/pkg/effects"
)

// retentionCmd shows the retention in force (EFFECTS_RETAIN_SUCCEEDED,
// EFFECTS_RETAIN_FAILED) and the oldest row kept per final status, and with
// --dry-run or --run counts or removes what one pass removes: the same
// retention.Pass the completer runs, so what it shows is what the completer
// does. Exit codes: 0 done, 1 the database failed, 2 bad arguments or
// settings.
func retentionCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("effects retention", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dryRun := fs.Bool("dry-run", false, "count the rows a removal pass would remove now; remove nothing")
	runPass := fs.Bool("run", false, "run one removal pass now (try --dry-run first)")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: effects retention [--dry-run | --run] [--json]\n\n"+
			"Shows the retention in force (EFFECTS_RETAIN_SUCCEEDED, EFFECTS_RETAIN_FAILED) and the\n"+
			"oldest succeeded and failed rows of EFFECTS_TABLE in DATABASE_URL. --dry-run counts what\n"+
			"a removal pass would remove; --run removes it. Pending rows are never removed.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	const name = "effects retention"
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", name, fs.Arg(0))
		return 2
	case *dryRun && *runPass:
		fmt.Fprintf(stderr, "%s: --dry-run and --run exclude each other\n", name)
		return 2
	}
	o, ctx, conn, done, code := openOncall(name, stderr)
	if code != 0 {
		return code
	}
	defer done()
	table, policy := o.table, o.policy

	out := retentionReport{Table: table.String(), Policy: policy.String(),
		RetainSucceeded: policy.Succeeded.String(), RetainFailed: policy.Failed.String(), RetainCancelled: policy.Cancelled.String()}
	if *dryRun || *runPass {
		if !policy.Enabled() {
			return o.fail(2, "no retention is set (EFFECTS_RETAIN_SUCCEEDED, EFFECTS_RETAIN_FAILED and EFFECTS_RETAIN_CANCELLED are empty or 0): nothing would be removed")
		}
		res, err := retention.Pass(ctx, conn, table, policy, retention.PassOptions{DryRun: *dryRun})
		if err != nil {
			return o.fail(1, "removal pass: %v", err)
		}
		out.Pass = &passReport{DryRun: res.DryRun, Succeeded: res.Removed.Succeeded, Failed: res.Removed.Failed, Cancelled: res.Removed.Cancelled}
	}
	oldest, err := retention.OldestAge(ctx, conn, table)
	if err != nil {
		return o.fail(1, "%v", err)
	}
	out.OldestSucceeded = ageString(oldest, effects.StatusSucceeded)
	out.OldestFailed = ageString(oldest, effects.StatusFailed)
	out.OldestCancelled = ageString(oldest, effects.StatusCancelled)

	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return o.fail(1, "%v", err)
		}
		return 0
	}
	fmt.Fprintf(stdout, "table:      %s\nretention:  %s\n", out.Table, out.Policy)
	fmt.Fprintf(stdout, "oldest:     succeeded %s, failed %s, cancelled %s\n", orNone(out.OldestSucceeded), orNone(out.OldestFailed), orNone(out.OldestCancelled))
	if p := out.Pass; p != nil {
		verb := "removed"
		if p.DryRun {
			verb = "would remove (dry run)"
		}
		fmt.Fprintf(stdout, "%s: %d succeeded, %d failed, %d cancelled\n", verb, p.Succeeded, p.Failed, p.Cancelled)
	}
	return 0
}

type retentionReport struct {
	Table           string      `json:"table"`
	Policy          string      `json:"policy"`
	RetainSucceeded string      `json:"retain_succeeded"` // "0s": forever
	RetainFailed    string      `json:"retain_failed"`
	RetainCancelled string      `json:"retain_cancelled"`
	OldestSucceeded string      `json:"oldest_succeeded_age,omitempty"`
	OldestFailed    string      `json:"oldest_failed_age,omitempty"`
	OldestCancelled string      `json:"oldest_cancelled_age,omitempty"`
	Pass            *passReport `json:"pass,omitempty"`
}

type passReport struct {
	DryRun    bool  `json:"dry_run"`
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
	Cancelled int64 `json:"cancelled"`
}

func ageString(m map[effects.Status]time.Duration, s effects.Status) string {
	d, ok := m[s]
	if !ok {
		return ""
	}
	return d.Round(time.Second).String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
