package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// maxScan bounds how many messages of a kind's subject `effects show` reads
// to find an effect's messages.
const maxScan = 10000

// showReport is what `effects show` prints.
type showReport struct {
	row
	// TableSource is, for a pending row of a table a table source
	// publishes, whether its cursor passed the row: "published" or
	// "waiting"; empty when no table source ever ran on the table.
	TableSource string `json:"table_source,omitempty"`
	// KindPaused is the pause of the row's kind (effects pause) when the
	// row is pending and its kind paused: why it does not run.
	KindPaused *pauseStats `json:"kind_paused,omitempty"`
	// JetStream is where a pending effect is in JetStream; nil when the row
	// is final or NATS_URL is not set.
	JetStream *jetStreamReport `json:"jetstream,omitempty"`
}

type jetStreamReport struct {
	Stream   string `json:"stream"`
	Subject  string `json:"subject"`
	Consumer string `json:"consumer"`
	// ConsumerFound is false when no dispatcher of the kind ever ran.
	ConsumerFound bool   `json:"consumer_found"`
	NumPending    uint64 `json:"consumer_num_pending"`
	AckPending    int    `json:"consumer_ack_pending"`
	Redelivered   int    `json:"consumer_redelivered"`
	// Messages are the effect's messages in the stream (the first run and
	// any re-runs), oldest first.
	Messages []streamMsg `json:"messages"`
	// Scanned is how many messages of the subject were read, from a minute
	// before the row was created (from the start for a created_at of
	// infinity or -infinity); Truncated says the scan stopped at its
	// bound before the end of the stream.
	Scanned   int  `json:"scanned"`
	Truncated bool `json:"truncated"`
}

type streamMsg struct {
	Sequence  uint64    `json:"sequence"`
	MsgID     string    `json:"msg_id"`
	Published time.Time `json:"published"`
	// State is relative to the kind's dispatcher consumer: "waiting" (not
	// delivered yet), "in flight" (delivered, not acknowledged: a handler
	// has it or it waits for a redelivery) or "acknowledged".
	State string `json:"state"`
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

	rep, err := showRow(ctx, conn, o, id)
	if err != nil {
		return o.fail(1, "%v", explainQueryError(err))
	}
	if rep == nil {
		return o.fail(1, "no effect %s in %s", id, o.table)
	}
	if rep.Status == string(effects.StatusPending) {
		if rep.TableSource, err = tableSourceState(ctx, conn, o, id); err != nil {
			return o.fail(1, "%v", explainQueryError(err))
		}
		if rep.KindPaused, err = kindPause(ctx, conn, o, rep.Kind); err != nil {
			return o.fail(1, "%v", err)
		}
	}
	if o.natsURL != "" && rep.Status == string(effects.StatusPending) {
		rep.JetStream, err = locate(ctx, o.natsURL, rep.row)
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

func showRow(ctx context.Context, conn *pgx.Conn, o *oncall, id string) (*showReport, error) {
	rows, err := conn.Query(ctx, `SELECT `+rowColumns+`, payload FROM `+o.table.Quoted()+` WHERE id = $1`, id)
	if err != nil {
		return nil, err
	}
	r, err := pgx.CollectOneRow(rows, func(rs pgx.CollectableRow) (row, error) {
		var r row
		var completion, payload []byte
		err := rs.Scan(&r.ID, &r.Kind, &r.Key, &r.Status, &r.Attempts, &r.Error, &completion, &r.CreatedAt, &r.CompletedAt,
			&r.RerunRequestedAt, &r.RerunRequestedBy, &r.CancelledAt, &r.CancelledBy, &payload)
		if completion != nil {
			r.Completion = completion
		}
		r.Payload = payload
		return r, err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &showReport{row: r}, nil
}

// tableSourceState says whether the table source's cursor passed row id:
// "published", "waiting", or "" when no table source ever ran on the table.
func tableSourceState(ctx context.Context, conn *pgx.Conn, o *oncall, id string) (string, error) {
	var hasCursor, published bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+o.table.CursorTable().Quoted()+`),
		`+ingest.PublishedSQL(o.table, "e")+` FROM `+o.table.Quoted()+` e WHERE id = $1`, id).Scan(&hasCursor, &published)
	switch {
	case err != nil:
		return "", err
	case !hasCursor:
		return "", nil
	case published:
		return "published", nil
	}
	return "waiting", nil
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

// locate finds r's messages in the EFFECTS stream, scanning the kind's
// subject from a minute before the row was created (the ingest publishes
// after the insert; the minute allows for clocks apart) with an ordered
// consumer, which leaves nothing behind, and reads the kind's dispatcher
// consumer.
func locate(ctx context.Context, natsURL string, r row) (*jetStreamReport, error) {
	if err := effects.ValidateKind(r.Kind); err != nil {
		return nil, fmt.Errorf("the row's kind cannot be in JetStream: %w", err)
	}
	nc, js, err := connectNATS(natsURL)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	rep := &jetStreamReport{Stream: effects.EffectsStream, Subject: effects.Subject(r.Kind),
		Consumer: dispatcher.ConsumerName(r.Kind), Messages: []streamMsg{}}
	stream, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", effects.EffectsStream, err)
	}
	var ackFloor, delivered uint64
	cons, err := stream.Consumer(ctx, rep.Consumer)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return nil, fmt.Errorf("consumer %s: %w", rep.Consumer, err)
	default:
		info, err := cons.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("consumer %s: %w", rep.Consumer, err)
		}
		rep.ConsumerFound = true
		rep.NumPending, rep.AckPending, rep.Redelivered = info.NumPending, info.NumAckPending, info.NumRedelivered
		ackFloor, delivered = info.AckFloor.Stream, info.Delivered.Stream
	}

	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{rep.Subject}}
	if created, ok := r.CreatedAt.Finite(); ok {
		start := created.Add(-time.Minute)
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	} // else no time to start from: the subject from its start
	oc, err := stream.OrderedConsumer(ctx, occ)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", rep.Subject, err)
	}
	for rep.Scanned < maxScan {
		batch, err := oc.FetchNoWait(min(500, maxScan-rep.Scanned))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", rep.Subject, err)
		}
		n := 0
		var left uint64
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			left = md.NumPending
			var e struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(m.Data(), &e) != nil || e.ID != r.ID {
				continue
			}
			sm := streamMsg{Sequence: md.Sequence.Stream, MsgID: m.Headers().Get(jetstream.MsgIDHeader), Published: md.Timestamp}
			switch {
			case !rep.ConsumerFound:
				sm.State = "no consumer"
			case sm.Sequence <= ackFloor:
				sm.State = "acknowledged"
			case sm.Sequence <= delivered:
				sm.State = "in flight"
			default:
				sm.State = "waiting"
			}
			rep.Messages = append(rep.Messages, sm)
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("read %s: %w", rep.Subject, err)
		}
		rep.Scanned += n
		if n == 0 || left == 0 {
			return rep, nil
		}
	}
	rep.Truncated = true
	return rep, nil
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
	fmt.Fprintf(tw, "completed:\t%s\n", timeOrDash(rep.CompletedAt))
	if rep.RerunRequestedAt != nil {
		fmt.Fprintf(tw, "re-run asked:\t%s by %s\n", timeOrDash(rep.RerunRequestedAt), by)
	}
	switch rep.TableSource {
	case "published":
		fmt.Fprintf(tw, "table source:\tpublished (its cursor passed the row)\n")
	case "waiting":
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
