package dispatcher

import (
	"context"
	"time"

	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/service"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// Option changes what [Main] does.
type Option func(*mainOptions)

type mainOptions struct{ builtins bool }

// WithBuiltins registers the built-in handlers ("echo" and "http_request",
// configured from EFFECTS_HTTP_ALLOW and friends) next to the registry's own.
func WithBuiltins() Option { return func(o *mainOptions) { o.builtins = true } }

// Main runs a dispatcher process for the handlers in reg, configured from the
// environment (see the README): JSON logs, /metrics, /healthz and /readyz on
// EFFECTS_ADMIN_ADDR (default :9091), graceful stop on SIGTERM. It does not
// return. A custom dispatcher binary is:
//
//	func main() {
//		reg := effects.NewRegistry()
//		reg.Handle("publish_rateset", publishRateset)
//		dispatcher.Main(reg, dispatcher.WithBuiltins())
//	}
func Main(reg *effects.Registry, opts ...Option) {
	var o mainOptions
	for _, opt := range opts {
		opt(&o)
	}
	service.Main("dispatcher", ":9091", func(ctx context.Context, deps service.Deps) error {
		if o.builtins {
			hcfg, err := handlers.ConfigFromEnv(nil)
			if err != nil {
				return &service.ConfigError{Err: err}
			}
			if err := handlers.Register(reg, hcfg); err != nil {
				return &service.ConfigError{Err: err}
			}
		}
		ns := natsconn.SettingsFromEnv(deps.Env)
		cfg, err := configFromEnv(deps.Env, ns.Streams)
		if err != nil {
			return &service.ConfigError{Err: err}
		}
		// One pending async publish per running handler, and then some.
		nc, js, err := natsconn.Connect(ns.URL, "effects-dispatcher", deps.Logger, max(4096, 2*cfg.Concurrency*len(reg.Kinds())))
		if err != nil {
			return err
		}
		d, err := New(cfg, reg, js, deps.Logger, deps.Registry, WithControls())
		if err != nil {
			natsconn.Close(nc, 5*time.Second)
			return &service.ConfigError{Err: err}
		}
		// The drain (it flushes the last acks and naks) gets what is left
		// of the shutdown's one deadline, not a timeout of its own.
		defer func() { natsconn.Close(nc, closeWithin(d.StopDeadline(), time.Now())) }()
		deps.Checks.Add("nats", natsconn.Ready(nc))
		deps.Checks.Add("dispatcher", d.Ready)
		return d.Run(ctx)
	})
}

// closeWithin is how long the connection's drain may take at the end of a
// stop whose deadline is deadline (zero: Run ended before a stop began).
func closeWithin(deadline, now time.Time) time.Duration {
	if deadline.IsZero() {
		return 5 * time.Second
	}
	return max(deadline.Sub(now), 0)
}
