package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// statsReport is what `effects stats` prints.
type statsReport struct {
	Table string `json:"table"`
	// Since is the --since window ("" for the whole table).
	Since string      `json:"since,omitempty"`
	Total statusCount `json:"total"`
	// OldestPendingAge is the age of the oldest pending row ("" if none).
	OldestPendingAge string      `json:"oldest_pending_age,omitempty"`
	Kinds            []kindStats `json:"kinds"`
	// NATS is false when NATS_URL is not set (no consumer figures).
	NATS bool `json:"nats"`
}

type statusCount struct {
	Pending   int64 `json:"pending"`
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
	Cancelled int64 `json:"cancelled"`
}

type kindStats struct {
	Kind string `json:"kind"`
	statusCount
	OldestPendingAge string `json:"oldest_pending_age,omitempty"`
	// Paused is the kind's pause (effects pause), nil when it is not
	// paused (PostgreSQL's word; the dispatchers follow it).
	Paused   *pauseStats    `json:"paused,omitempty"`
	Consumer *consumerStats `json:"consumer,omitempty"`
}

type pauseStats struct {
	Since time.Time `json:"since"`
	By    *string   `json:"by"`
}

type consumerStats struct {
	Name  string `json:"name"`
	Found bool   `json:"found"`
	// NumPending: messages not delivered yet (the backlog); AckPending:
	// delivered and not acknowledged; Redelivered: delivered more than once
	// and not acknowledged.
	NumPending  uint64 `json:"num_pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
}

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

	rep, err := countStats(ctx, conn, o, *since)
	if err != nil {
		return o.fail(1, "%v", explainQueryError(err))
	}
	if o.natsURL != "" {
		if err := consumerFigures(ctx, o.natsURL, rep); err != nil {
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

func countStats(ctx context.Context, conn *pgx.Conn, o *oncall, since time.Duration) (*statsReport, error) {
	rep := &statsReport{Table: o.table.String(), Kinds: []kindStats{}}
	var sinceArg *time.Duration
	if since > 0 {
		sinceArg = &since
		rep.Since = since.String()
	}
	rows, err := conn.Query(ctx, `SELECT kind, status, count(*), extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending' AND isfinite(created_at)))::float8
	      FROM `+o.table.Quoted()+`
	     WHERE ($1::interval IS NULL OR created_at >= now() - $1::interval)
	     GROUP BY kind, status`, sinceArg)
	if err != nil {
		return nil, err
	}
	byKind := map[string]*kindStats{}
	oldest := -1.0
	var kind, status string
	var n int64
	// The age in seconds: a row created centuries ago has an age past
	// time.Duration's 292 years. 'infinity' and '-infinity' have none (and
	// now() minus '-infinity' is "interval out of range").
	var age *float64
	_, err = pgx.ForEachRow(rows, []any{&kind, &status, &n, &age}, func() error {
		k := byKind[kind]
		if k == nil {
			k = &kindStats{Kind: kind}
			byKind[kind] = k
		}
		switch effects.Status(status) {
		case effects.StatusPending:
			k.Pending += n
			rep.Total.Pending += n
		case effects.StatusSucceeded:
			k.Succeeded += n
			rep.Total.Succeeded += n
		case effects.StatusFailed:
			k.Failed += n
			rep.Total.Failed += n
		case effects.StatusCancelled:
			k.Cancelled += n
			rep.Total.Cancelled += n
		}
		if age != nil {
			k.OldestPendingAge = ageText(*age)
			if *age > oldest {
				oldest = *age
				rep.OldestPendingAge = k.OldestPendingAge
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	paused, err := pausedKinds(ctx, conn, o)
	if err != nil {
		return nil, err
	}
	for kind, p := range paused {
		k := byKind[kind]
		if k == nil { // paused before any effect of it
			k = &kindStats{Kind: kind}
			byKind[kind] = k
		}
		k.Paused = p
	}
	for _, k := range byKind {
		rep.Kinds = append(rep.Kinds, *k)
	}
	sort.Slice(rep.Kinds, func(i, j int) bool { return rep.Kinds[i].Kind < rep.Kinds[j].Kind })
	return rep, nil
}

// consumerFigures reads the dispatcher consumer of each kind of the table.
func consumerFigures(ctx context.Context, natsURL string, rep *statsReport) error {
	nc, js, err := connectNATS(natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", effects.EffectsStream, err)
	}
	rep.NATS = true
	for i := range rep.Kinds {
		k := &rep.Kinds[i]
		if effects.ValidateKind(k.Kind) != nil {
			continue // rejected at ingest; never in the stream
		}
		c := &consumerStats{Name: dispatcher.ConsumerName(k.Kind)}
		k.Consumer = c
		cons, err := stream.Consumer(ctx, c.Name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("consumer %s: %w", c.Name, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("consumer %s: %w", c.Name, err)
		}
		c.Found = true
		c.NumPending, c.AckPending, c.Redelivered = info.NumPending, info.NumAckPending, info.NumRedelivered
	}
	return nil
}

// ageText writes an age of sec seconds as a rounded time.Duration does, in
// hours past what a Duration holds.
func ageText(sec float64) string {
	if sec < float64(math.MaxInt64/int64(time.Second)) {
		return time.Duration(math.Round(sec) * float64(time.Second)).String()
	}
	return fmt.Sprintf("%.0fh", math.Floor(sec/3600))
}

// pausedKinds are the kinds paused now, by PostgreSQL (the dispatchers
// follow it).
func pausedKinds(ctx context.Context, conn *pgx.Conn, o *oncall) (map[string]*pauseStats, error) {
	kinds, err := control.New(conn, nil, o.table, control.Options{}).Kinds(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]*pauseStats{}
	for _, k := range kinds {
		if k.Paused && k.PausedAt != nil {
			out[k.Kind] = &pauseStats{Since: *k.PausedAt, By: k.PausedBy}
		}
	}
	return out, nil
}

// kindPause is kind's pause, nil when it is not paused.
func kindPause(ctx context.Context, conn *pgx.Conn, o *oncall, kind string) (*pauseStats, error) {
	paused, err := pausedKinds(ctx, conn, o)
	return paused[kind], err
}
