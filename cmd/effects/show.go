package main

import (
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/pkg/effects"
)

// showReport is what `effects show` prints.
type showReport struct {
	operator.Row
	// TableSource is, for a pending row of a table a table source
	// publishes, whether its cursor passed the row: "published" or
	// "waiting"; empty when no table source ever ran on the table.
	TableSource string `json:"table_source,omitempty"`
	// KindPaused is the pause of the row's kind (effects pause) when the
	// row is pending and its kind paused: why it does not run.
	KindPaused *operator.PauseStats `json:"kind_paused,omitempty"`
	// JetStream is where a pending effect is in JetStream; nil when the row
	// is final or NATS_URL is not set.
	JetStream *operator.Location `json:"jetstream,omitempty"`
}

// showCmd shows one row and, for a pending row when NATS_URL is set, where
// its message is in JetStream.
func showCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("effects show", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: effects show [--json] ID\n\n"+
			"Shows the row of effect ID and, when it is pending and NATS_URL is set, its messages in\n"+
			"the EFFECTS stream and the kind's dispatcher consumer.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	name := "effects show"
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "%s: want one effect id, got %d arguments\n", name, fs.NArg())
		return 2
	}
	id := fs.Arg(0)
	if !effects.IsUUID(id) {
		fmt.Fprintf(stderr, "%s: %q is not an effect id (a UUID)\n", name, id)
		return 2
	}
	o, ctx, conn, done, code := openOncall(name, stderr)
	if code != 0 {
		return code
	}
	defer done()

	r, err := o.store(conn).Get(ctx, id)
	if err != nil {
		return o.fail(1, "%v", err)
	}
	if r == nil {
		return o.fail(1, "no effect %s in %s", id, o.table)
	}
	rep := &showReport{Row: *r}
	if rep.Status == string(effects.StatusPending) {
		store := o.store(conn)
		// A scheduled row is the completer's scheduler's, never the table
		// source's: its cursor passes it without publishing it.
		if !rep.Scheduled() {
			if rep.TableSource, err = store.TableSourceState(ctx, id); err != nil {
				return o.fail(1, "%v", err)
			}
		}
		if rep.KindPaused, err = store.KindPause(ctx, rep.Kind); err != nil {
			return o.fail(1, "%v", err)
		}
	}
	if o.natsURL != "" && rep.Status == string(effects.StatusPending) {
		nc, js, err := connectNATS(o.natsURL)
		if err != nil {
			return o.fail(1, "%v", err)
		}
		defer nc.Close()
		rep.JetStream, err = operator.Locate(ctx, js, rep.Row)
		if err != nil {
			return o.fail(1, "%v", err)
		}
	}
	if *asJSON {
		return writeJSON(o, stdout, rep)
	}
	printShow(stdout, rep, o.natsURL != "")
	return 0
}

// connectNATS connects once, without the services' endless reconnects: a
// command reports an unreachable server instead of waiting for it.
func connectNATS(url string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Name("effects-cli"), nats.Timeout(5*time.Second), nats.NoReconnect())
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s (NATS_URL): %w", natsconn.Redact(url), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

func printShow(w io.Writer, rep *showReport, natsSet bool) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	by := "-"
	if rep.RerunRequestedBy != nil {
		by = *rep.RerunRequestedBy
	}
	completion := "-"
	if rep.Completion != nil {
		completion = string(rep.Completion)
	}
	fmt.Fprintf(tw, "id:\t%s\n", rep.ID)
	fmt.Fprintf(tw, "kind:\t%s\n", rep.Kind)
	if rep.Key != nil {
		fmt.Fprintf(tw, "key:\t%s\n", oneLine(rep.Key, 600))
	}
	fmt.Fprintf(tw, "status:\t%s\n", rep.Status)
	fmt.Fprintf(tw, "attempts:\t%d\n", rep.Attempts)
	fmt.Fprintf(tw, "error:\t%s\n", oneLine(rep.Error, 200))
	fmt.Fprintf(tw, "completion:\t%s\n", completion)
	fmt.Fprintf(tw, "payload:\t%s\n", rep.Payload)
	fmt.Fprintf(tw, "created:\t%s\n", rep.CreatedAt.Format(time.RFC3339Nano))
	if rep.Scheduled() {
		state := ""
		if rep.Waiting {
			state = " (waiting in the table)"
		}
		fmt.Fprintf(tw, "run at:\t%s%s\n", rep.RunAt.Format(time.RFC3339Nano), state)
	}
	fmt.Fprintf(tw, "completed:\t%s\n", timeOrDash(rep.CompletedAt))
	if rep.RerunRequestedAt != nil {
		fmt.Fprintf(tw, "re-run asked:\t%s by %s\n", timeOrDash(rep.RerunRequestedAt), by)
	}
	switch rep.TableSource {
	case operator.SourcePublished:
		fmt.Fprintf(tw, "table source:\tpublished (its cursor passed the row)\n")
	case operator.SourceWaiting:
		fmt.Fprintf(tw, "table source:\tnot published yet (its cursor has not reached the row: see effects_table_backlog)\n")
	}
	if p := rep.KindPaused; p != nil {
		fmt.Fprintf(tw, "kind paused:\t%s by %s (effects resume %s)\n", p.Since.UTC().Format(time.RFC3339), orDash(deref(p.By)), rep.Kind)
	}
	if rep.CancelledAt != nil {
		fmt.Fprintf(tw, "cancelled:\t%s by %s\n", timeOrDash(rep.CancelledAt), orDash(deref(rep.CancelledBy)))
	}
	_ = tw.Flush()
	js := rep.JetStream
	switch {
	case js == nil && rep.Status != string(effects.StatusPending):
		return
	case js == nil && !natsSet:
		fmt.Fprintln(w, "\njetstream: NATS_URL is not set; set it to see where the effect is")
		return
	}
	fmt.Fprintf(w, "\njetstream: stream %s, subject %s\n", js.Stream, js.Subject)
	if js.ConsumerFound {
		fmt.Fprintf(w, "consumer %s: %d waiting, %d ack pending, %d redelivered\n", js.Consumer, js.NumPending, js.AckPending, js.Redelivered)
	} else {
		fmt.Fprintf(w, "consumer %s: none (no dispatcher of kind %s has run)\n", js.Consumer, rep.Kind)
	}
	if len(js.Messages) == 0 {
		bound := ""
		if js.Truncated {
			bound = ", stopped at the bound"
		}
		if rep.Waiting {
			fmt.Fprintf(w, "no message of this effect in the stream: it is scheduled and waits in the table; the completer's scheduler publishes it at its run at\n")
			return
		}
		fmt.Fprintf(w, "no message of this effect in the stream (scanned %d from a minute before it was created%s): the ingest has not published it\n",
			js.Scanned, bound)
		return
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQUENCE\tMSG ID\tPUBLISHED\tSTATE")
	for _, m := range js.Messages {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", m.Sequence, m.MsgID, m.Published.UTC().Format(time.RFC3339), m.State)
	}
	_ = tw.Flush()
}
