// Package devstack is `effects dev`: the whole pipeline in one process for a
// first run or local development. It starts an embedded NATS server with
// JetStream, uses the PostgreSQL of DATABASE_URL or starts a private one
// (internal/pgcluster), migrates the table, and runs the ingest (table
// source and webhook), the dispatcher with the built-in handlers and the
// completer, each built from its own package exactly as its binary builds
// it. It prints the settings a shell needs to talk to the stack.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/admin"
	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/internal/pgcluster"
	"github.com/effects-run/effects/internal/reconcile"
	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// Secret is the webhook secret of the development stack.
const Secret = "dev-secret"

// Options of [Run]. Addresses whose port is taken fall back to a free port.
type Options struct {
	// DatabaseURL is the PostgreSQL to use; empty starts a private one.
	DatabaseURL string
	// DataDir keeps NATS's store and the private PostgreSQL; empty uses a
	// temporary directory removed at the end.
	DataDir string
	// NATSAddr, HTTPAddr (the webhook) and AdminAddr (the ingest's; the
	// dispatcher's and completer's are the next two ports, or free ports).
	NATSAddr, HTTPAddr, AdminAddr string
	// Force is closed to stop at once (a second Ctrl-C): PostgreSQL gets an
	// immediate shutdown and work in flight is not waited for.
	Force <-chan struct{}
}

// Run starts the stack, prints its settings on out, and runs until ctx is
// cancelled; then it stops everything it started and returns.
func Run(ctx context.Context, o Options, out io.Writer, logger *slog.Logger) (err error) {
	if o.NATSAddr == "" {
		o.NATSAddr = "127.0.0.1:4222"
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = "127.0.0.1:8080"
	}
	if o.AdminAddr == "" {
		o.AdminAddr = "127.0.0.1:9090"
	}
	dir := o.DataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "effects-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		// Under root PostgreSQL runs as the postgres user, which must be
		// able to pass through to its own subdirectory.
		if err := os.Chmod(dir, 0o711); err != nil {
			return err
		}
	} else if dir, err = filepath.Abs(dir); err != nil {
		return err
	}

	// NATS, embedded: the same nats-server module the tests embed.
	host, port := splitAddr(o.NATSAddr)
	if port == 0 {
		port = -1 // nats-server: 0 means its default port, -1 a free one
	} else if !portFree(host, port) {
		logger.Warn("NATS port taken; using a free one", "addr", o.NATSAddr)
		port = -1
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "effects-dev", Host: host, Port: port, JetStream: true,
		StoreDir: filepath.Join(dir, "nats"), NoSigs: true, NoLog: true,
	})
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("the embedded NATS server did not start in 10s")
	}
	natsURL := ns.ClientURL()

	// PostgreSQL.
	dbURL := o.DatabaseURL
	var pg *pgcluster.Cluster
	if dbURL == "" {
		logger.Info("DATABASE_URL is unset; starting a private PostgreSQL (initdb)", "dir", filepath.Join(dir, "postgres"))
		pg, err = pgcluster.Start(ctx, filepath.Join(dir, "postgres"), 0)
		if err != nil {
			return fmt.Errorf("private PostgreSQL (or set DATABASE_URL to a PostgreSQL of yours): %w", err)
		}
		logger.Info("postgres started", "pid", pg.Pid, "dir", pg.Dir)
		defer func() {
			select {
			case <-o.Force:
				pg.Stop(true)
			default:
				stopped := make(chan struct{})
				go func() { pg.Stop(false); close(stopped) }()
				select {
				case <-stopped:
				case <-o.Force:
					pg.Stop(true)
				}
			}
			logger.Info("postgres stopped", "pid", pg.Pid)
		}()
		dbURL = pg.URL
	}
	const table = schema.DefaultTable
	if err := completer.Migrate(ctx, completer.Config{DatabaseURL: dbURL, Table: table}); err != nil {
		return err
	}

	// The services, each with its own NATS connection, registry and admin
	// endpoint, as when they run as three processes.
	runCtx, stopServices := context.WithCancel(ctx)
	defer stopServices()
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	fail := func(name string, err error) {
		if err != nil && runCtx.Err() == nil {
			errOnce.Do(func() { firstErr = fmt.Errorf("%s: %w", name, err) })
			stopServices()
		}
	}
	var conns []*nats.Conn
	defer func() {
		stopServices()
		waitOrForce(&wg, o.Force)
		for _, nc := range conns {
			natsconn.Close(nc, 2*time.Second)
		}
	}()
	connect := func(name string) (*nats.Conn, jetstream.JetStream, error) {
		nc, js, err := natsconn.Connect(natsURL, name, logger.With("service", name), 0)
		if err == nil {
			conns = append(conns, nc)
		}
		return nc, js, err
	}
	adminPort := 0
	if _, p := splitAddr(o.AdminAddr); p > 0 {
		adminPort = p
	}
	adminAddrs := map[string]string{}
	serveAdmin := func(name string, i int, reg *prometheus.Registry, checks *admin.Checks) error {
		addr := o.AdminAddr
		if adminPort > 0 {
			h, _ := splitAddr(o.AdminAddr)
			addr = net.JoinHostPort(h, strconv.Itoa(adminPort+i))
		}
		ln, err := listen(addr, logger)
		if err != nil {
			return err
		}
		adminAddrs[name] = ln.Addr().String()
		srv := &http.Server{Handler: admin.Handler(reg, checks), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		wg.Go(func() {
			<-runCtx.Done()
			_ = srv.Close()
		})
		return nil
	}

	// ingest: table source and webhook.
	inc, ijs, err := connect("effects-ingest")
	if err != nil {
		return err
	}
	ireg, ichecks := admin.NewRegistry(), &admin.Checks{}
	ilog := logger.With("service", "ingest")
	wh, err := ingest.New(ingest.Config{WebhookSecret: Secret}, ijs, ilog, ireg)
	if err != nil {
		return err
	}
	hln, err := listen(o.HTTPAddr, logger)
	if err != nil {
		return err
	}
	tcfg := ingest.TableConfig{DatabaseURL: dbURL, Table: table}.WithDefaults()
	tpool, err := ingest.OpenTablePool(tcfg)
	if err != nil {
		return err
	}
	defer tpool.Close()
	src, err := ingest.NewTableSource(tcfg, tpool, ijs, ilog, ireg)
	if err != nil {
		return err
	}
	ichecks.Add("nats", natsconn.Ready(inc))
	ichecks.Add("streams", wh.Ready)
	ichecks.Add("table", src.Ready)
	if err := serveAdmin("ingest", 0, ireg, ichecks); err != nil {
		return err
	}
	wg.Go(func() { fail("ingest webhook", wh.Serve(runCtx, hln)) })
	wg.Go(func() { fail("ingest table source", src.Run(runCtx)) })

	// dispatcher with the built-in handlers.
	dnc, djs, err := connect("effects-dispatcher")
	if err != nil {
		return err
	}
	hcfg, err := handlers.ConfigFromEnv(nil) // nil: the process environment
	if err != nil {
		return err
	}
	handlersReg := effects.NewRegistry()
	if err := handlers.Register(handlersReg, hcfg); err != nil {
		return err
	}
	dreg, dchecks := admin.NewRegistry(), &admin.Checks{}
	d, err := dispatcher.New(dispatcher.Config{}, handlersReg, djs, logger.With("service", "dispatcher"), dreg, dispatcher.WithControls())
	if err != nil {
		return err
	}
	dchecks.Add("nats", natsconn.Ready(dnc))
	dchecks.Add("dispatcher", d.Ready)
	if err := serveAdmin("dispatcher", 1, dreg, dchecks); err != nil {
		return err
	}
	wg.Go(func() { fail("dispatcher", d.Run(runCtx)) })

	// completer.
	cnc, cjs, err := connect("effects-completer")
	if err != nil {
		return err
	}
	ccfg := completer.Config{DatabaseURL: dbURL, Table: table}.WithDefaults()
	cpool, err := completer.OpenPool(ccfg)
	if err != nil {
		return err
	}
	defer cpool.Close()
	creg, cchecks := admin.NewRegistry(), &admin.Checks{}
	c, err := completer.New(ccfg, cpool, cjs, logger.With("service", "completer"), creg)
	if err != nil {
		return err
	}
	// The scheduler, as cmd/completer runs it: scheduled effects run in
	// effects dev too.
	sc, err := reconcile.NewScheduler(reconcile.ScheduleConfig{Table: table}, cpool, cjs, logger.With("service", "completer"), creg)
	if err != nil {
		return err
	}
	wg.Go(func() { _ = sc.Run(runCtx) })
	cchecks.Add("postgres", c.CheckPostgres)
	cchecks.Add("nats", natsconn.Ready(cnc))
	cchecks.Add("consumer", c.CheckConsuming)
	if err := serveAdmin("completer", 2, creg, cchecks); err != nil {
		return err
	}
	wg.Go(func() { fail("completer", c.Run(runCtx)) })
	// The operator controls' bucket the dispatcher reads, from the table.
	ctable, err := schema.ParseTable(table)
	if err != nil {
		return err
	}
	cs := control.NewSyncer(cpool, cjs, ctable, control.SyncOptions{Logger: logger.With("service", "completer")})
	wg.Go(func() { fail("control sync", cs.Run(runCtx, control.DefaultSyncInterval, creg)) })

	// Ready when every service is.
	if _, ok := retry.Until(runCtx, retry.Policy{Min: 20 * time.Millisecond, Max: 100 * time.Millisecond}, func(ctx context.Context) error {
		return errors.Join(src.Ready(ctx), wh.Ready(ctx), d.Ready(ctx), c.CheckConsuming(ctx))
	}, nil); !ok {
		return firstErr
	}

	if pg == nil && hasPassword(dbURL) {
		// The user's own, with a secret in it: they have it already, and
		// the README promises it is never printed.
		fmt.Fprintf(out, "# DATABASE_URL: the one in your environment (not printed: it holds a password)\n")
	} else {
		fmt.Fprintf(out, "DATABASE_URL=%s\n", shellQuote(dbURL))
	}
	fmt.Fprintf(out, "NATS_URL=%s\n", shellQuote(natsURL))
	fmt.Fprintf(out, "# effects dev is running: the table source and the webhook ingest, the dispatcher (echo, http_request) and the completer.\n")
	if pg != nil {
		fmt.Fprintf(out, "# postgres:   private cluster in %s (pid %d), stopped and removed with effects dev\n", pg.Dir, pg.Pid)
	}
	fmt.Fprintf(out, "# webhook:    http://%s%s  (header %s: %s)\n", hln.Addr(), ingest.EventsPath, ingest.SecretHeader, Secret)
	fmt.Fprintf(out, "# metrics:    ingest http://%s/metrics  dispatcher http://%s/metrics  completer http://%s/metrics\n",
		adminAddrs["ingest"], adminAddrs["dispatcher"], adminAddrs["completer"])
	fmt.Fprintf(out, "# Export the two lines above in another shell, then try:\n")
	fmt.Fprintf(out, "psql \"$DATABASE_URL\" -c \"INSERT INTO effects (kind, payload) VALUES ('echo', '{\\\"hello\\\": \\\"world\\\"}') RETURNING id\"\n")
	fmt.Fprintf(out, "psql \"$DATABASE_URL\" -c \"SELECT id, kind, status, completion, completed_at - created_at AS took FROM effects ORDER BY created_at DESC LIMIT 5\"\n")
	fmt.Fprintf(out, "# Ctrl-C stops everything (a second Ctrl-C forces).\n")
	if f, ok := out.(interface{ Sync() error }); ok {
		_ = f.Sync()
	}
	logger.Info("effects dev ready")

	<-runCtx.Done()
	logger.Info("stopping; Ctrl-C again to force")
	stopServices()
	waitOrForce(&wg, o.Force)
	return firstErr
}

func waitOrForce(wg *sync.WaitGroup, force <-chan struct{}) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-force:
	}
}

// listen listens on addr, or on a free port of its host when addr's port is
// taken.
func listen(addr string, logger *slog.Logger) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		host, _ := splitAddr(addr)
		logger.Warn("port taken; using a free one", "addr", addr)
		ln, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
	}
	return ln, err
}

func splitAddr(addr string) (string, int) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "127.0.0.1", 0
	}
	if host == "" {
		host = "127.0.0.1"
	}
	port, _ := strconv.Atoi(p)
	return host, port
}

func portFree(host string, port int) bool {
	if port <= 0 {
		return true
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, `'\''`...)
			continue
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}

// hasPassword reports whether a PostgreSQL URL or keyword/value string
// carries a password.
func hasPassword(dbURL string) bool {
	cfg, err := pgconn.ParseConfig(dbURL)
	return err != nil || cfg.Password != ""
}
