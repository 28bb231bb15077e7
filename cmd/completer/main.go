// Command completer writes the outcomes of effects back into the effects
// table.
//
//	completer                   run the service (see internal/completer)
//	completer migrate [what]    create or upgrade the table and apply the
//	                            streams' configuration, then exit (safe to
//	                            rerun); what is "table" or "streams" for one
//
// Configuration is read from the environment; DATABASE_URL is required.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/controlkv"
	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/reconcile"
	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/service"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "migrate":
			os.Exit(migrate(os.Args[2:]))
		case "version", "-version", "--version":
			fmt.Println("completer", service.Version())
			os.Exit(0)
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
  completer                  write completions from JetStream into the effects table
  completer migrate          create or upgrade the effects table, create the streams or
                             apply EFFECTS_STREAM_* to them, and exit (safe to run again)
  completer migrate table    only the table (needs DATABASE_URL)
  completer migrate streams  only the streams (needs NATS_URL)
  completer --version        print the version and exit

Configured by environment variables: DATABASE_URL (required), EFFECTS_TABLE,
NATS_URL, EFFECTS_COMPLETER_*, EFFECTS_RETAIN_*, EFFECTS_RECONCILE_AFTER, EFFECTS_SCHEDULE_INTERVAL, EFFECTS_ADMIN_ADDR, EFFECTS_LOG_LEVEL; see the README.
`)
}

func run(ctx context.Context, d service.Deps) error {
	// Not ready until the completer consumes: without a check /readyz
	// would answer ready while it is still starting.
	d.Checks.Add("consumer", func(context.Context) error { return errors.New("starting") })
	cfg, err := completer.ConfigFromEnv(d.Env)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	rcfg, err := retention.ConfigFromEnv(d.Env, cfg.Table)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	ccfg, err := reconcile.ConfigFromEnv(d.Env, cfg.Table)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	scfg, err := reconcile.ScheduleConfigFromEnv(d.Env, cfg.Table)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	pool, err := completer.OpenPool(cfg)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	defer pool.Close()
	nc, js, err := natsconn.Connect(d.Shared.NATSURL, "effects-completer", d.Logger, 0)
	if err != nil {
		return err
	}
	// Acks are sent without waiting; draining makes sure the last ones left.
	defer natsconn.Close(nc, 5*time.Second)
	// A server found too old after the start stops the completer with the
	// reason: it could consume nothing.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	natsconn.OnRefused(nc, cancel)
	c, err := completer.New(cfg, pool, js, d.Logger, d.Registry)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	rm, err := retention.New(rcfg, pool, d.Logger, d.Registry)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	rc, err := reconcile.New(ccfg, pool, js, d.Logger, d.Registry)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	sc, err := reconcile.NewScheduler(scfg, pool, js, d.Logger, d.Registry)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	table, err := schema.ParseTable(cfg.Table)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	cs := control.NewSyncer(pool, js, table, control.SyncOptions{Streams: cfg.Streams, Logger: d.Logger})
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
	// The reconciler too (a batch in flight is rolled back; a row it had
	// published is published again with the same message id, stored once).
	reconcileDone := make(chan struct{})
	go func() {
		defer close(reconcileDone)
		_ = rc.Run(rctx)
	}()
	// And the scheduler, which publishes scheduled effects when due (a
	// batch in flight is rolled back and published again with the same
	// message ids, stored once).
	scheduleDone := make(chan struct{})
	go func() {
		defer close(scheduleDone)
		_ = sc.Run(rctx)
	}()
	// And the copy of the operator controls the dispatchers read: created
	// again and filled from PostgreSQL when NATS lost it.
	syncDone := make(chan error, 1)
	go func() { syncDone <- cs.Run(rctx, control.DefaultSyncInterval, d.Registry) }()
	err = c.Run(ctx)
	stopRetention()
	<-retentionDone
	<-reconcileDone
	<-scheduleDone
	if serr := <-syncDone; serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, natsconn.ErrServerTooOld) {
		return cause
	}
	return nil
}

// streamsTimeout bounds how long `completer migrate` waits for NATS.
const streamsTimeout = 30 * time.Second

// migrate runs `completer migrate [table|streams]`: 0 when the table and the
// streams are up to date, 1 when migrating failed, 2 on a configuration or
// usage error. Applying the streams' configuration (EFFECTS_STREAM_MAX_AGE,
// EFFECTS_DUPLICATE_WINDOW, EFFECTS_STREAM_REPLICAS) to existing streams is
// done here and nowhere else: the services only create a missing stream.
func migrate(args []string) int {
	env := envconfig.New()
	shared := settings.Read(env, "")
	logger, err := service.NewLogger(shared.LogLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "completer migrate: %v\n", err)
		return 2
	}
	logger = logger.With("service", "completer", "command", "migrate")
	doTable, doStreams := true, true
	switch {
	case len(args) == 0:
	case len(args) == 1 && args[0] == "table":
		doStreams = false
	case len(args) == 1 && args[0] == "streams":
		doTable = false
	default:
		fmt.Fprintf(os.Stderr, "completer migrate: unknown arguments %q\n\n", args)
		usage(os.Stderr)
		return 2
	}
	if err := env.Err(); err != nil {
		logger.Error("configuration", "error", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if doTable {
		cfg, err := completer.ConfigFromEnv(env)
		if err != nil {
			logger.Error("configuration", "error", err)
			return 2
		}
		if err := completer.Migrate(ctx, cfg); err != nil {
			logger.Error("migrate failed", "table", cfg.Table, "error", err)
			return 1
		}
		logger.Info("effects table is up to date", "table", cfg.Table, "schema_version", schema.LatestVersion())
	}
	if doStreams {
		if err := applyStreams(ctx, shared, logger); err != nil {
			logger.Error("applying the streams' configuration failed", "nats", natsconn.Redact(shared.NATSURL), "error", err)
			return 1
		}
		logger.Info("streams are up to date", "max_age", shared.Streams.MaxAge.String(),
			"duplicate_window", shared.Streams.Duplicates.String(), "replicas", shared.Streams.Replicas)
	}
	if doTable && doStreams {
		// The operator controls' bucket, filled from the table, so that
		// dispatchers started next can read it at once.
		cfg, _ := completer.ConfigFromEnv(env)
		if err := syncControls(ctx, cfg, shared, logger); err != nil {
			logger.Error("creating the operator controls' bucket failed", "bucket", controlkv.Bucket, "error", err)
			return 1
		}
		logger.Info("operator controls' bucket is up to date", "bucket", controlkv.Bucket)
	}
	return 0
}

// syncControls makes the bucket EFFECTS_CONTROL equal to the table's
// controls (creating it if missing), waiting up to streamsTimeout for NATS.
func syncControls(ctx context.Context, cfg completer.Config, shared settings.Shared, logger *slog.Logger) error {
	table, err := schema.ParseTable(cfg.Table)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, streamsTimeout)
	defer cancel()
	conn, err := completer.Connect(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	nc, js, err := natsconn.Connect(shared.NATSURL, "effects-migrate", logger, 0)
	if err != nil {
		return err
	}
	defer natsconn.Close(nc, 5*time.Second)
	s := control.NewSyncer(conn, js, table, control.SyncOptions{Streams: shared.Streams, Logger: logger})
	return untilDone(ctx, nc, func(ctx context.Context) error {
		_, err := s.Once(ctx)
		return err
	})
}

// untilDone runs f, while nc is connected, until it succeeds or ctx ends.
func untilDone(ctx context.Context, nc *nats.Conn, f func(context.Context) error) error {
	var last error
	_, ok := retry.Until(ctx, retry.Policy{Min: 100 * time.Millisecond, Max: 2 * time.Second},
		func(ctx context.Context) error {
			if last = natsconn.Ready(nc)(ctx); last != nil {
				return last // not connected yet, or a server refused as too old
			}
			last = f(ctx)
			return last
		}, nil)
	if !ok {
		if last == nil {
			last = ctx.Err()
		}
		return fmt.Errorf("after %s: %w", streamsTimeout, last)
	}
	return nil
}

func applyStreams(ctx context.Context, shared settings.Shared, logger *slog.Logger) error {
	nc, js, err := natsconn.Connect(shared.NATSURL, "effects-migrate", logger, 0)
	if err != nil {
		return err
	}
	defer natsconn.Close(nc, 5*time.Second)
	ctx, cancel := context.WithTimeout(ctx, streamsTimeout)
	defer cancel()
	return untilDone(ctx, nc, func(ctx context.Context) error {
		if err := effects.ApplyStreams(ctx, js, shared.Streams); err != nil {
			return err
		}
		return controlkv.Apply(ctx, js, shared.Streams)
	})
}
