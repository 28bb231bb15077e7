package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/service"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects/console"
)

// defaultUIAddr is where `effects ui` listens unless --addr says otherwise:
// loopback, so that a console without a token is reachable from this
// machine only.
const defaultUIAddr = "127.0.0.1:8090"

func uiCmd(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signalContext()
	defer stop()
	return runUI(ctx, args, stdout, stderr, nil)
}

// runUI serves the console (pkg/effects/console) until ctx ends; serving,
// if not nil, is called with the address once it listens. Exit codes: 0
// stopped, 1 the database, NATS or the address failed, 2 bad arguments or
// settings (a non-loopback --addr without EFFECTS_UI_TOKEN among them).
func runUI(ctx context.Context, args []string, stdout, stderr io.Writer, serving func(addr string)) int {
	fs := flag.NewFlagSet("effects ui", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", defaultUIAddr, "listen on HOST:PORT; an address other than loopback needs EFFECTS_UI_TOKEN")
	refresh := fs.Duration("refresh", console.DefaultRefresh, "how often the pages refresh their list and charts (1s or more)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error (logs go to stderr)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: effects ui [--addr HOST:PORT] [--refresh D]\n\n"+
			"Serves the operators' web console: the newest effects, one effect, the kinds with their\n"+
			"backlog and last hour; Retry, Cancel, Pause and Resume. Reads DATABASE_URL, NATS_URL,\n"+
			"EFFECTS_TABLE, EFFECTS_UI_TOKEN and EFFECTS_UI_READONLY_TOKEN (docs/console.md).\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	name := "effects ui"
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, name+": "+format+"\n", a...)
		return 2
	}
	host, _, err := net.SplitHostPort(*addr)
	switch {
	case fs.NArg() > 0:
		return bad("unexpected argument %q", fs.Arg(0))
	case err != nil:
		return bad("--addr %q: want HOST:PORT, e.g. %s", *addr, defaultUIAddr)
	case *refresh < time.Second:
		return bad("--refresh %s: want 1s or more", *refresh)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return bad("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	env := envconfig.New()
	token, readOnly := env.Secret("EFFECTS_UI_TOKEN"), env.Secret("EFFECTS_UI_READONLY_TOKEN")
	if token == "" && !console.IsLoopback(host) {
		return bad("--addr %s is not a loopback address and EFFECTS_UI_TOKEN is not set: without a token the console "+
			"serves only this machine (127.0.0.1, localhost or [::1]); set EFFECTS_UI_TOKEN to serve it beyond", *addr)
	}
	if err := console.CheckTokens(token, readOnly, true); err != nil {
		return bad("%v", err)
	}
	streams := settings.Streams(env)
	if err := env.Err(); err != nil {
		return bad("%v", err)
	}
	o, code := newOncall(name, stderr)
	if o == nil {
		return code
	}
	natsURL := o.natsURL
	if natsURL == "" {
		natsURL = settings.DefaultNATSURL
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level, ReplaceAttr: service.DurationsAsText}))

	pool, err := pgxpool.New(ctx, o.dbURL)
	if err == nil {
		err = pool.Ping(ctx)
		if err != nil {
			pool.Close()
		}
	}
	if err != nil {
		return o.fail(1, "connect to PostgreSQL (DATABASE_URL): %v", err)
	}
	defer pool.Close()
	// A service's connection: it waits for a NATS that is down and
	// reconnects, so the console shows the table while NATS is away.
	nc, _, err := natsconn.Connect(natsURL, "effects-ui", logger, 0)
	if err != nil {
		return o.fail(1, "%v", err)
	}
	defer nc.Close()
	h, err := console.New(console.Config{
		DB: pool, Table: o.table.String(), NATS: nc,
		Token: token, ReadOnlyToken: readOnly, AllowUnauthenticated: token == "",
		Refresh:         *refresh,
		Streams:         streams,
		RetainSucceeded: o.policy.Succeeded, RetainFailed: o.policy.Failed,
		Logger: logger,
	})
	if err != nil {
		return bad("%v", err)
	}
	defer h.Close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return o.fail(1, "listen on %s: %v", *addr, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      6 * time.Minute, // "Retry all failed" re-runs up to 1000 effects in one request
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	url := "http://" + ln.Addr().String() + "/"
	auth := "EFFECTS_UI_TOKEN"
	switch {
	case token == "":
		auth = "none: loopback only, every visitor may act"
	case readOnly != "":
		auth = "EFFECTS_UI_TOKEN, EFFECTS_UI_READONLY_TOKEN"
	}
	logger.Info("serving the console", "url", url, "table", o.table.String(), "nats_url", natsconn.Redact(natsURL), "auth", auth)
	if token != "" && !console.IsLoopback(host) {
		logger.Warn("the console is served over plain HTTP: put TLS in front of it (a reverse proxy) so that the token does not cross the network in clear")
	}
	fmt.Fprintf(stdout, "effects ui: %s\n", url)
	if serving != nil {
		serving(ln.Addr().String())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return o.fail(1, "serve: %v", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		logger.Warn("stopping the console", "error", err)
	}
	logger.Info("stopped")
	return 0
}
