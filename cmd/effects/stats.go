package main

import (
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/effects-run/effects/internal/operator"
)

// statsCmd prints counts by status and kind, the oldest pending age, and,
// when NATS_URL is set, each kind's dispatcher consumer backlog.
func statsCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("effects stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	since := fs.Duration("since", 0, "count only rows created in this last span (e.g. 24h); 0: the whole table (a full count: slow on a very large table)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: effects stats [--since D] [--json]\n\n"+
			"Counts the rows of EFFECTS_TABLE by kind and status, the oldest pending row's age, the\n"+
			"paused kinds (effects pause) and,\n"+
			"when NATS_URL is set, each kind's dispatcher consumer: backlog, ack pending, redelivered.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	name := "effects stats"
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", name, fs.Arg(0))
		return 2
	case *since < 0:
		fmt.Fprintf(stderr, "%s: --since %s: want a positive duration such as 24h\n", name, *since)
		return 2
	}
	o, ctx, conn, done, code := openOncall(name, stderr)
	if code != 0 {
		return code
	}
	defer done()

	rep, err := o.store(conn).CountStats(ctx, *since)
	if err != nil {
		return o.fail(1, "%v", err)
	}
	if o.natsURL != "" {
		nc, js, err := connectNATS(o.natsURL)
		if err != nil {
			return o.fail(1, "%v", err)
		}
		defer nc.Close()
		if err := operator.ConsumerFigures(ctx, js, rep, false); err != nil {
			return o.fail(1, "%v", err)
		}
	}
	if *asJSON {
		return writeJSON(o, stdout, rep)
	}
	fmt.Fprintf(stdout, "table: %s", rep.Table)
	if rep.Since != "" {
		fmt.Fprintf(stdout, " (rows created in the last %s)", rep.Since)
	}
	fmt.Fprintf(stdout, "\noldest pending: %s\n\n", orNone(rep.OldestPendingAge))
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "KIND\tPENDING\tSUCCEEDED\tFAILED\tCANCELLED\tOLDEST PENDING\tPAUSED\t"
	if rep.NATS {
		header += "BACKLOG\tACK PENDING\tREDELIVERED\t"
	}
	fmt.Fprintln(tw, header)
	for _, k := range rep.Kinds {
		paused := "-"
		if p := k.Paused; p != nil {
			paused = "since " + p.Since.UTC().Format(time.RFC3339)
			if p.By != nil {
				paused += " by " + *p.By
			}
		}
		line := fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%s\t%s\t", k.Kind, k.Pending, k.Succeeded, k.Failed, k.Cancelled, orDash(k.OldestPendingAge), paused)
		if c := k.Consumer; c != nil {
			if c.Found {
				line += fmt.Sprintf("%d\t%d\t%d\t", c.NumPending, c.AckPending, c.Redelivered)
			} else {
				line += "no consumer\t-\t-\t"
			}
		}
		fmt.Fprintln(tw, line)
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%d\t%s\t\t\n", rep.Total.Pending, rep.Total.Succeeded, rep.Total.Failed, rep.Total.Cancelled, orDash(rep.OldestPendingAge))
	if err := tw.Flush(); err != nil {
		return o.fail(1, "%v", err)
	}
	return 0
}
