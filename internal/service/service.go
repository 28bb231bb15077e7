// Package service is the lifecycle every effects binary shares: JSON logs on
// stderr, the admin endpoints, SIGTERM/SIGINT turned into a cancelled context
// whose cause is [ErrStop], and exit codes.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/admin"
	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/settings"
)

// ErrStop is the cause of the context cancelled by SIGTERM or SIGINT. Work
// interrupted because of it is not a failed attempt.
var ErrStop = errors.New("service stopping")

// Deps is what [Main] gives a service's run function.
type Deps struct {
	Logger   *slog.Logger
	Registry *prometheus.Registry
	Checks   *admin.Checks
	Env      *envconfig.Reader
	// Shared are the settings every service shares, read once.
	Shared settings.Shared
}

// NewLogger returns a JSON logger on stderr at the level named by level
// (debug, info, warn, error).
func NewLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToLower(level))); err != nil {
		return nil, fmt.Errorf("EFFECTS_LOG_LEVEL=%q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l, ReplaceAttr: DurationsAsText})), nil
}

// DurationsAsText is a slog ReplaceAttr that writes a time.Duration the way
// Go and the settings spell it ("1.5s", "250ms") instead of as the JSON
// handler's nanoseconds.
func DurationsAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// Main runs a service until SIGTERM or SIGINT and exits: 0 after a graceful
// stop, 1 when run fails, 2 on a configuration error. defaultAdminAddr is
// used when EFFECTS_ADMIN_ADDR is unset.
//
// --help and --version print and exit before anything starts.
func Main(name, defaultAdminAddr string, run func(ctx context.Context, d Deps) error) {
	HandleArgs(name, os.Args[1:])
	os.Exit(run1(name, defaultAdminAddr, run))
}

func run1(name, defaultAdminAddr string, run func(ctx context.Context, d Deps) error) int {
	env := envconfig.New()
	shared := settings.Read(env, defaultAdminAddr)
	logger, err := NewLogger(shared.LogLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 2
	}
	logger = logger.With("service", name)
	adminAddr := shared.AdminAddr

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-sigs
		logger.Info("stopping", "signal", sig.String())
		cancel(ErrStop)
		signal.Stop(sigs)
	}()

	stopTracing, err := startTracing(ctx, name)
	if err != nil {
		logger.Error("configuration", "error", err)
		return 2
	}
	defer func() {
		// Flushes the spans not exported yet.
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := stopTracing(sctx); err != nil {
			logger.Warn("exporting the last spans", "error", err)
		}
	}()

	deps := Deps{Logger: logger, Registry: admin.NewRegistry(), Checks: &admin.Checks{}, Env: env, Shared: shared}
	ln, err := net.Listen("tcp", adminAddr)
	if err != nil {
		logger.Error("admin listener", "addr", adminAddr, "error", err)
		return 1
	}
	handler := admin.Handler(deps.Registry, deps.Checks)
	if shared.Pprof {
		handler = admin.WithPprof(handler)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("admin server", "error", err)
		}
	}()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
	}()
	logger.Info("starting", "admin_addr", ln.Addr().String())

	err = run(ctx, deps)
	var cfgErr *ConfigError
	switch {
	case errors.As(err, &cfgErr):
		logger.Error("configuration", "error", cfgErr.Err)
		return 2
	case err != nil && !errors.Is(err, ErrStop):
		logger.Error("stopped with an error", "error", err)
		return 1
	}
	logger.Info("stopped")
	return 0
}

// ConfigError marks an error in the settings; [Main] exits 2 on it.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return "configuration: " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }
