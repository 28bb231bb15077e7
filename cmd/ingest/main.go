// Command ingest is the Hasura event-trigger webhook: it publishes every new
// effects row to JetStream. See internal/ingest.
package main

import (
	"context"
	"errors"
	"time"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/service"
)

func main() {
	service.Main("ingest", ":9090", func(ctx context.Context, d service.Deps) error {
		cfg, err := ingest.ConfigFromEnv(d.Env)
		if err != nil {
			return &service.ConfigError{Err: err}
		}
		nc, js, err := natsconn.Connect(d.Shared.NATSURL, "effects-ingest", d.Logger, 0)
		if err != nil {
			return err
		}
		defer natsconn.Close(nc, 5*time.Second)
		// A server found too old after the start stops the ingest with
		// the reason: it could publish nothing.
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		natsconn.OnRefused(nc, cancel)
		d.Checks.Add("nats", natsconn.Ready(nc))
		srv, err := ingest.New(cfg, js, d.Logger, d.Registry)
		if err != nil {
			return err
		}
		d.Checks.Add("streams", srv.Ready)
		if err := srv.Run(ctx); err != nil {
			return err
		}
		if cause := context.Cause(ctx); errors.Is(cause, natsconn.ErrServerTooOld) {
			return cause
		}
		return nil
	})
}
