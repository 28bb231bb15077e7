package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// The on-call commands (list, show, retry) share their settings, their
// exit codes (0 done, 1 a runtime failure: the database, NATS, an effect
// that is gone or cannot be re-run, 2 bad arguments or settings) and the
// shape of a row (operator.Row).

// oncall holds what the on-call commands read from the environment.
type oncall struct {
	name    string // "effects list", for messages
	stderr  io.Writer
	dbURL   string
	natsURL string // "" when NATS_URL is not set
	table   schema.Table
	policy  retention.Policy
}

// fail writes "effects <cmd>: <message>" to stderr and returns code.
func (o *oncall) fail(code int, format string, a ...any) int {
	fmt.Fprintf(o.stderr, o.name+": "+format+"\n", a...)
	return code
}

// newOncall reads DATABASE_URL, NATS_URL, EFFECTS_TABLE and the retention
// settings (to explain a row that is gone); it returns a non-zero exit code
// after writing why when they are missing or wrong.
func newOncall(name string, stderr io.Writer) (*oncall, int) {
	o := &oncall{name: name, stderr: stderr}
	env := envconfig.New()
	o.dbURL = env.Secret("DATABASE_URL")
	o.natsURL = env.Secret("NATS_URL")
	tableName := env.String("EFFECTS_TABLE", schema.DefaultTable)
	cfg, err := retention.ConfigFromEnv(env, tableName)
	if err != nil {
		return nil, o.fail(2, "%v", err)
	}
	o.policy = cfg.Policy
	if o.dbURL == "" {
		return nil, o.fail(2, "DATABASE_URL is not set")
	}
	if o.table, err = schema.ParseTable(tableName); err != nil {
		return nil, o.fail(2, "EFFECTS_TABLE=%q: %v", tableName, err)
	}
	return o, 0
}

// store is the table on conn, for the operator package.
func (o *oncall) store(conn *pgx.Conn) operator.Store {
	return operator.Store{DB: conn, Table: o.table, Retention: o.policy}
}

// connect opens the database; pgx's errors name host, user and database,
// never the password.
func (o *oncall) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, o.dbURL)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL (DATABASE_URL): %w", err)
	}
	return conn, nil
}

// openOncall is the start every database command shares: the settings
// (newOncall), a context that Ctrl-C or SIGTERM ends, and a connection. On
// failure it has written why and code is the exit code; otherwise done
// closes the connection and stops the signal handling.
func openOncall(name string, stderr io.Writer) (o *oncall, ctx context.Context, conn *pgx.Conn, done func(), code int) {
	o, code = newOncall(name, stderr)
	if o == nil {
		return nil, nil, nil, nil, code
	}
	ctx, stop := signalContext()
	conn, err := o.connect(ctx)
	if err != nil {
		stop()
		return nil, nil, nil, nil, o.fail(1, "%v", err)
	}
	return o, ctx, conn, func() {
		_ = conn.Close(context.Background())
		stop()
	}, 0
}

// signalContext is cancelled by Ctrl-C or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// parseFlags parses args; ok is false with the exit code when parsing
// failed or help was asked.
func parseFlags(fs *flag.FlagSet, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	return 0, true
}

// listCmd lists rows newest first, filtered by status, kind and age.
func listCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("effects list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	status := fs.String("status", "", "only rows with this status: pending, succeeded, failed or cancelled")
	kind := fs.String("kind", "", "only rows of this kind")
	key := fs.String("key", "", "only rows with this key (the pending one holding it, and the final ones)")
	since := fs.Duration("since", 0, "only rows created in this last span (e.g. 1h, 30m); 0: any age")
	limit := fs.Int("limit", 50, "at most this many rows (1 to 10000)")
	asJSON := fs.Bool("json", false, "print JSON (an array of rows) instead of a table")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: effects list [--status pending|succeeded|failed|cancelled] [--kind K] [--key KEY] [--since 1h] [--limit N] [--json]\n\n"+
			"Lists the rows of EFFECTS_TABLE in DATABASE_URL, newest first.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	name := "effects list"
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, name+": "+format+"\n", a...)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		return bad("unexpected argument %q", fs.Arg(0))
	case *status != "" && !operator.ValidStatus(*status):
		return bad("--status %q: want %s", *status, operator.StatusList())
	case *since < 0:
		return bad("--since %s: want a positive duration such as 1h", *since)
	case *limit < 1 || *limit > 10000:
		return bad("--limit %d: want 1 to 10000", *limit)
	}
	if *kind != "" {
		if err := effects.ValidateKind(*kind); err != nil {
			return bad("--kind: %v", err)
		}
	}
	o, ctx, conn, done, code := openOncall(name, stderr)
	if code != 0 {
		return code
	}
	defer done()

	rows, err := o.store(conn).List(ctx, operator.Filter{Status: *status, Kind: *kind, Key: *key, Since: *since, Limit: *limit})
	if err != nil {
		return o.fail(1, "%v", err)
	}
	if *asJSON {
		return writeJSON(o, stdout, rows)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tKEY\tSTATUS\tATTEMPTS\tCREATED\tRUN AT\tCOMPLETED\tERROR")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.ID, r.Kind, oneLine(r.Key, 32), r.Status, r.Attempts,
			r.CreatedAt.Format(time.RFC3339), r.Due(), timeOrDash(r.CompletedAt), oneLine(r.Error, 60))
	}
	if err := tw.Flush(); err != nil {
		return o.fail(1, "%v", err)
	}
	if len(rows) == 0 {
		fmt.Fprintln(stderr, "no effects match")
	}
	return 0
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// oneLine is s on one line, cut to n runes, "-" for none.
func oneLine(s *string, n int) string {
	if s == nil || *s == "" {
		return "-"
	}
	v := strings.Join(strings.Fields(*s), " ")
	if r := []rune(v); len(r) > n {
		v = string(r[:n-1]) + "…"
	}
	return v
}

func writeJSON(o *oncall, w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return o.fail(1, "%v", err)
	}
	return 0
}
