package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// controlCmd runs `effects pause KIND...`, `effects resume KIND...` and
// `effects cancel ID...`: the operator controls of internal/control, which
// the console calls too. Exit codes: 0 every kind or effect is in the
// state asked for and every dispatcher confirmed it; 1 a runtime failure,
// an effect refused (succeeded or failed) or not found, or a change that
// PostgreSQL took but the dispatchers did not confirm; 2 bad arguments or
// settings.
func controlCmd(what string, args []string, stdout, stderr io.Writer) int {
	name := "effects " + what
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	by := fs.String("by", "", "who asks (recorded with the change, e.g. an on-call name)")
	wait := fs.Duration("wait", control.DefaultWait, "how long to wait for every dispatcher to confirm")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	arg, help := "KIND...", map[string]string{
		"pause": "Pauses kinds: their effects are still accepted and stay pending, and no dispatcher\n" +
			"starts one until the kind is resumed. Attempts already running finish.",
		"resume": "Resumes paused kinds: their pending effects run.",
	}[what]
	if what == "cancel" {
		arg = "ID..."
		help = "Cancels pending effects: the row becomes cancelled (final) and no dispatcher starts the\n" +
			"effect any more, including one waiting for a retry. A running attempt has its handler's\n" +
			"context cancelled; what it did stays done and its result is not recorded. Succeeded and\n" +
			"failed effects are refused."
	}
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: "+name+" [--by NAME] [--wait D] [--json] "+arg+"\n\n"+help+"\n"+
			"Returns once every dispatcher confirmed the change (DATABASE_URL, NATS_URL).\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, name+": "+format+"\n", a...)
		return 2
	}
	items := fs.Args()
	switch {
	case len(items) == 0:
		return bad("name at least one %s", strings.ToLower(strings.TrimSuffix(arg, "...")))
	case *wait <= 0:
		return bad("--wait %s: want a positive duration such as 1m", *wait)
	}
	for _, it := range items {
		if what == "cancel" && !effects.IsUUID(it) {
			return bad("%q is not an effect id (a UUID)", it)
		}
		if what != "cancel" {
			if err := effects.ValidateKind(it); err != nil {
				return bad("%v", err)
			}
		}
	}
	env := envconfig.New()
	streams := settings.Streams(env)
	if err := env.Err(); err != nil {
		return bad("%v", err)
	}
	o, ctx, conn, done, code := openOncall(name, stderr)
	if code != 0 {
		return code
	}
	defer done()

	// Without NATS the change is still recorded in PostgreSQL (the
	// completer tells the dispatchers once NATS is back), and reported
	// as not confirmed.
	natsURL := o.natsURL
	if natsURL == "" {
		natsURL = settings.DefaultNATSURL
	}
	var js jetstream.JetStream
	nc, j, err := connectNATS(natsURL)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
	} else {
		defer nc.Close()
		js = j
	}
	ctl := control.New(conn, js, o.table, control.Options{Wait: *wait, Streams: streams})
	var rep control.Report
	switch what {
	case "pause":
		rep, err = ctl.Pause(ctx, items, *by)
	case "resume":
		rep, err = ctl.Resume(ctx, items, *by)
	default:
		rep, err = ctl.Cancel(ctx, items, *by)
	}
	if errors.Is(err, control.ErrInvalid) {
		return bad("%v", err)
	}
	if err != nil {
		return o.fail(1, "%v", err)
	}
	if *asJSON {
		if code := writeJSON(o, stdout, rep); code != 0 {
			return code
		}
	} else {
		writeControlReport(stdout, what, rep)
	}
	if rep.OK() {
		return 0
	}
	failed := 0
	for _, r := range rep.Results {
		if !r.Outcome.OK() {
			failed++
		}
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "%s: %d of %d could not be %s\n", name, failed, len(rep.Results), past(what))
	}
	if !rep.Confirmed {
		fmt.Fprintf(stderr, "%s: %s\n", name, rep.Error)
		if len(rep.Waiting) > 0 {
			fmt.Fprintf(stderr, "%s: not confirmed by: %s\n", name, strings.Join(rep.Waiting, ", "))
		}
	}
	return 1
}

func past(what string) string {
	if what == "cancel" {
		return "cancelled"
	}
	return what + "d"
}

func writeControlReport(w io.Writer, what string, rep control.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if what == "cancel" {
		fmt.Fprintln(tw, "ID\tKIND\tSTATUS\tOUTCOME\tDETAIL")
	} else {
		fmt.Fprintln(tw, "KIND\tOUTCOME\tDETAIL")
	}
	for _, r := range rep.Results {
		detail := r.Error
		if detail == "" && r.At != nil {
			detail = r.At.UTC().Format(time.RFC3339)
			if r.By != nil {
				detail += " by " + *r.By
			}
		}
		if what == "cancel" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, orDash(r.Kind), orDash(r.Status), r.Outcome, orDash(detail))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Kind, r.Outcome, orDash(detail))
		}
	}
	_ = tw.Flush()
	if rep.Confirmed {
		fmt.Fprintf(w, "confirmed by %d dispatcher%s\n", rep.Dispatchers, plural(rep.Dispatchers))
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
