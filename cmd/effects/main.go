// Command effects is the operators' and developers' command line.
//
//	effects dev        run the whole pipeline locally in one process
//	effects retention  show the retention in force; --dry-run, --run a removal pass
//	effects list       list effects newest first
//	effects show       one effect's row and where it is in JetStream
//	effects retry      re-run failed effects without Hasura
//	effects pause      pause kinds: their effects wait, pending
//	effects resume     resume paused kinds
//	effects cancel     cancel pending effects
//	effects stats      counts by kind and status, oldest pending, backlogs
//	effects tail       completions as they happen
//	effects ui         the operators' web console
//	effects --version  print the version
//
// `effects dev` starts an embedded NATS server, a private PostgreSQL (unless
// DATABASE_URL is set), migrates the table and runs ingest (table source and
// webhook), dispatcher (built-in handlers) and completer; see
// internal/devstack. Ctrl-C stops it all; a second Ctrl-C forces.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/effects-run/effects/internal/devstack"
	"github.com/effects-run/effects/internal/service"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: effects <command>

commands:
  dev         run ingest, dispatcher and completer with an embedded NATS and a
              private PostgreSQL (or DATABASE_URL) in one process, for a first
              run and local development (effects dev --help for its flags)
  retention   show the retention in force and the oldest final rows; --dry-run
              counts what a removal pass would remove, --run removes it
              (needs DATABASE_URL; effects retention --help for its flags)
  list        list effects newest first, by status, kind and age
              (effects list --help)
  show        show one effect's row and, when pending, where it is in JetStream
  retry       re-run failed effects without Hasura (effects retry --help)
  pause       pause kinds: no dispatcher starts their effects until resumed
  resume      resume paused kinds
  cancel      cancel pending effects (never run; the row says cancelled)
  stats       counts by kind and status, oldest pending, consumer backlogs
  tail        print completions as they happen (needs only NATS_URL)
  ui          serve the operators' web console on 127.0.0.1:8090
              (effects ui --help; docs/console.md)
  version     print the version (also --version)
  help        print this (also --help)
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "effects", service.Version())
		return 0
	case "dev":
		return dev(args[1:], stdout, stderr)
	case "retention":
		return retentionCmd(args[1:], stdout, stderr)
	case "list":
		return listCmd(args[1:], stdout, stderr)
	case "show":
		return showCmd(args[1:], stdout, stderr)
	case "retry":
		return retryCmd(args[1:], stdout, stderr)
	case "pause", "resume", "cancel":
		return controlCmd(args[0], args[1:], stdout, stderr)
	case "stats":
		return statsCmd(args[1:], stdout, stderr)
	case "tail":
		return tailCmd(args[1:], stdout, stderr)
	case "ui":
		return uiCmd(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "effects: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func dev(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("effects dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o devstack.Options
	fs.StringVar(&o.DataDir, "data-dir", "", "keep NATS's store and the private PostgreSQL here (default: a temporary directory, removed at exit)")
	fs.StringVar(&o.NATSAddr, "nats-addr", "127.0.0.1:4222", "embedded NATS server's address (a free port if taken)")
	fs.StringVar(&o.HTTPAddr, "http-addr", "127.0.0.1:8080", "the ingest webhook's address (a free port if taken)")
	fs.StringVar(&o.AdminAddr, "admin-addr", "127.0.0.1:9090", "the ingest's /metrics address; the dispatcher's and completer's take the next two ports (free ports if taken)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error (logs go to stderr)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: effects dev [flags]\n\n"+
			"Runs the whole pipeline in one process. PostgreSQL is DATABASE_URL when set, else a\n"+
			"private cluster made with initdb. Prints DATABASE_URL and NATS_URL for your shell.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "effects dev: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "effects dev: -log-level %q: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: service.DurationsAsText}))
	o.DatabaseURL = os.Getenv("DATABASE_URL")

	// The first Ctrl-C (or SIGTERM) stops in order; the second forces.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	force := make(chan struct{})
	o.Force = force
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		<-sigs
		cancel(service.ErrStop)
		<-sigs
		logger.Warn("forcing the stop")
		close(force)
	}()

	if err := devstack.Run(ctx, o, stdout, logger); err != nil {
		logger.Error("effects dev stopped with an error", "error", err)
		return 1
	}
	logger.Info("stopped")
	return 0
}
