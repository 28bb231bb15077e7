// Command ingest puts every new effects row on JetStream: as the Hasura
// event-trigger webhook (EFFECTS_SOURCE=webhook, the default), by reading the
// table itself (EFFECTS_SOURCE=table), or both. See internal/ingest.
package main

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/service"
)

func main() {
	service.Main("ingest", ":9090", run)
}

func run(ctx context.Context, d service.Deps) error {
	webhook, table, err := ingest.Sources(d.Env)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	var cfg ingest.Config
	if webhook {
		if cfg, err = ingest.ConfigFromEnv(d.Env); err != nil {
			return &service.ConfigError{Err: err}
		}
	}
	var tcfg ingest.TableConfig
	if table {
		if tcfg, err = ingest.TableConfigFromEnv(d.Env); err != nil {
			return &service.ConfigError{Err: err}
		}
	}
	if err := d.Env.Err(); err != nil {
		return &service.ConfigError{Err: err}
	}
	nc, js, err := natsconn.Connect(d.Shared.NATSURL, "effects-ingest", d.Logger, 0)
	if err != nil {
		return err
	}
	defer natsconn.Close(nc, 5*time.Second)
	// A server found too old after the start stops the ingest with the
	// reason: it could publish nothing.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	natsconn.OnRefused(nc, cancel)
	d.Checks.Add("nats", natsconn.Ready(nc))

	g, gctx := errgroup.WithContext(ctx)
	if webhook {
		srv, err := ingest.New(cfg, js, d.Logger, d.Registry)
		if err != nil {
			return err
		}
		d.Checks.Add("streams", srv.Ready)
		g.Go(func() error { return srv.Run(gctx) })
	}
	if table {
		pool, err := ingest.OpenTablePool(tcfg)
		if err != nil {
			return &service.ConfigError{Err: err}
		}
		defer pool.Close()
		src, err := ingest.NewTableSource(tcfg, pool, js, d.Logger, d.Registry)
		if err != nil {
			return err
		}
		d.Checks.Add("table", src.Ready)
		g.Go(func() error { return src.Run(gctx) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, natsconn.ErrServerTooOld) {
		return cause
	}
	return nil
}
