// Command completer writes the outcomes of effects back into the effects
// table.
//
//	completer           run the service (see internal/completer)
//	completer migrate   create or upgrade the table, then exit (safe to rerun)
//
// Configuration is read from the environment; DATABASE_URL is required.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/service"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "migrate":
			os.Exit(migrate())
		case "help", "-h", "-help", "--help":
			usage(os.Stdout)
			os.Exit(0)
		default:
			fmt.Fprintf(os.Stderr, "completer: unknown command %q\n\n", os.Args[1])
			usage(os.Stderr)
			os.Exit(2)
		}
	}
	service.Main("completer", ":9092", run)
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  completer           write completions from JetStream into the effects table
  completer migrate   create or upgrade the effects table and exit (safe to run again)

Configured by environment variables: DATABASE_URL (required), EFFECTS_TABLE,
NATS_URL, EFFECTS_COMPLETER_*, EFFECTS_RETAIN_*, EFFECTS_ADMIN_ADDR, EFFECTS_LOG_LEVEL; see the README.
`)
}

func run(ctx context.Context, d service.Deps) error {
	// Not ready until the completer consumes: without a check /readyz
	// would answer ready while it is still starting.
	d.Checks.Add("consumer", func(context.Context) error { return errors.New("starting") })
	streams := natsconn.SettingsFromEnv(d.Env)
	cfg, err := completer.ConfigFromEnv(d.Env)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	cfg.Streams = streams.Streams
	rcfg, err := retention.ConfigFromEnv(d.Env, cfg.Table)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	pool, err := completer.OpenPool(cfg)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	defer pool.Close()
	nc, js, err := natsconn.Connect(streams.URL, "effects-completer", d.Logger, 0)
	if err != nil {
		return err
	}
	// Acks are sent without waiting; draining makes sure the last ones left.
	defer natsconn.Close(nc, 5*time.Second)
	c, err := completer.New(cfg, pool, js, d.Logger, d.Registry)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	rm, err := retention.New(rcfg, pool, d.Logger, d.Registry)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	d.Checks.Add("postgres", c.CheckPostgres)
	d.Checks.Add("nats", natsconn.Ready(nc))
	d.Checks.Add("consumer", c.CheckConsuming)
	// Retention runs beside the completer, in every replica, and stops with
	// it (a batch in flight is rolled back; the next pass redoes it).
	rctx, stopRetention := context.WithCancel(ctx)
	retentionDone := make(chan struct{})
	go func() {
		defer close(retentionDone)
		_ = rm.Run(rctx)
	}()
	err = c.Run(ctx)
	stopRetention()
	<-retentionDone
	return err
}

// migrate runs `completer migrate`: 0 when the table is up to date, 1 when
// migrating failed, 2 on a configuration error.
func migrate() int {
	env := envconfig.New()
	logger, err := service.NewLogger(env.String("EFFECTS_LOG_LEVEL", "info"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "completer migrate: %v\n", err)
		return 2
	}
	logger = logger.With("service", "completer", "command", "migrate")
	cfg, err := completer.ConfigFromEnv(env)
	if err != nil {
		logger.Error("configuration", "error", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := completer.Migrate(ctx, cfg); err != nil {
		logger.Error("migrate failed", "table", cfg.Table, "error", err)
		return 1
	}
	logger.Info("effects table is up to date", "table", cfg.Table, "schema_version", schema.LatestVersion())
	return 0
}
