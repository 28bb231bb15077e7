package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Databases the benchmark creates on the PostgreSQL it is given, and drops
// at the end.
const (
	effectsDB = "effects_bench"
	riverDB   = "effects_bench_river"
)

const webhookSecret = "effects-bench-secret"

// result is one contender's measurement.
type result struct {
	Name string
	// Unit is "effects/s", or "POST/s" for the ingest alone.
	Unit string
	N    int
	// Rate is N over first insert (or POST) to last completion written.
	Rate float64
	// P50, P95, P99: seconds from insert (or POST) to completion written
	// (the ingest alone: a POST's round trip), at the maximum rate.
	P50, P95, P99 float64
	// Half* are the second phase, at half the maximum rate (zero if not run).
	HalfN                     int
	HalfRate                  float64
	HalfP50, HalfP95, HalfP99 float64
	// Procs are the processes, with CPU per effect at the maximum rate and
	// peak RSS over the run.
	Procs []procResult
	// Statements are PostgreSQL's most expensive statements of the
	// maximum-rate phase, when pg_stat_statements is loaded.
	Statements []statement
}

// statement is one row of pg_stat_statements.
type statement struct {
	Query   string
	Calls   int64
	TotalMS float64
	Rows    int64
}

// topStatements are the statements of the connection's database that took
// the most time since the last reset (the tool's own queries left out).
func topStatements(ctx context.Context, conn *pgx.Conn) ([]statement, error) {
	rows, err := conn.Query(ctx, `SELECT left(regexp_replace(s.query, '\s+', ' ', 'g'), 160), s.calls, s.total_exec_time, s.rows
		FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
		WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat_statements%'
		ORDER BY s.total_exec_time DESC LIMIT 6`)
	if err != nil {
		return nil, fmt.Errorf("pg_stat_statements: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (statement, error) {
		var st statement
		err := r.Scan(&st.Query, &st.Calls, &st.TotalMS, &st.Rows)
		return st, err
	})
}

type procResult struct {
	Name string
	// Load marks the load generator (Hasura's and the application's part),
	// left out of the pipeline's total.
	Load bool
	// CPU is µs of CPU per effect; NaN-like -1 when unknown.
	CPU float64
	// PeakRSS in bytes (VmHWM); 0 when not measured (PostgreSQL).
	PeakRSS int64
}

// PipelineCPU is the CPU per effect of every process but the load
// generator.
func (r result) PipelineCPU() float64 {
	var sum float64
	for _, p := range r.Procs {
		if !p.Load && p.CPU > 0 {
			sum += p.CPU
		}
	}
	return sum
}

func runComparison(ctx context.Context, c config) (err error) {
	env, err := newBenchEnv(ctx, c)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, env.close(err == nil)) }()
	m := env.machine
	fmt.Printf("effects-bench: %s; %d CPUs (%s), load average %s\n", m.GoVersion, m.NumCPU, m.CPUModel, m.LoadStart)
	fmt.Printf("effects-bench: PostgreSQL %s, nats-server %s; logs in %s\n", m.PGVersion, m.NATSVersion, env.logDir)

	var results []result
	start := time.Now()
	for _, name := range c.contenders {
		fmt.Printf("effects-bench: %s ...\n", name)
		var r result
		if name == "river" {
			r, err = env.runRiverContender(ctx, nil)
		} else {
			r, err = env.runEffectsContender(ctx, name, nil)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		fmt.Printf("effects-bench: %s: %.0f %s, p99 %s\n", name, r.Rate, r.Unit, ms(r.P99))
		results = append(results, r)
	}
	m.LoadEnd = loadAverage()
	m.Took = time.Since(start)
	rep := report{Machine: m, Results: results, Config: c, When: time.Now().UTC()}
	fmt.Println()
	fmt.Print(rep.text())
	if c.out != "" {
		if err := os.MkdirAll(c.out, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(c.out, "latest.md"), []byte(rep.markdown()), 0o644); err != nil {
			return err
		}
		if err := rep.chart(filepath.Join(c.out, "latest.png")); err != nil {
			return err
		}
		fmt.Printf("\nwrote %s and %s\n", filepath.Join(c.out, "latest.md"), filepath.Join(c.out, "latest.png"))
		if c.updateDocs {
			for path, link := range map[string]string{"README.md": "docs/bench/latest.md", filepath.Join("docs", "performance.md"): "bench/latest.md"} {
				ok, err := replaceMarked(path, rep.summary(link))
				if err != nil {
					return err
				}
				if ok {
					fmt.Printf("updated the table in %s\n", path)
				}
			}
		}
	}
	return nil
}

// benchEnv is what every contender shares: the configuration, the
// connection to PostgreSQL's maintenance database, and the log directory.
type benchEnv struct {
	c config
	// statements is set when PostgreSQL has pg_stat_statements loaded: the
	// benchmark then reports the statements of each contender.
	statements bool
	admin      *pgx.Conn
	logDir     string
	machine    machine
}

func newBenchEnv(ctx context.Context, c config) (*benchEnv, error) {
	admin, err := pgx.Connect(ctx, c.dbURL)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL at EFFECTS_BENCH_DATABASE_URL (default %s): %w", defaultDatabaseURL, err)
	}
	logDir, err := os.MkdirTemp("", "effects-bench-")
	if err != nil {
		admin.Close(ctx)
		return nil, err
	}
	e := &benchEnv{c: c, admin: admin, logDir: logDir}
	e.machine = describeMachine(ctx, admin, c.natsServer)
	for _, db := range []string{effectsDB, riverDB} {
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
			_ = e.close(false)
			return nil, err
		}
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+db); err != nil {
			_ = e.close(false)
			return nil, err
		}
	}
	var preload string
	if err := admin.QueryRow(ctx, `SELECT current_setting('shared_preload_libraries')`).Scan(&preload); err == nil && strings.Contains(preload, "pg_stat_statements") {
		e.statements = true
		for _, db := range []string{effectsDB, riverDB} {
			conn, err := pgx.Connect(ctx, e.dbURL(db))
			if err == nil {
				_, err = conn.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`)
				conn.Close(ctx)
			}
			if err != nil {
				_ = e.close(false)
				return nil, fmt.Errorf("pg_stat_statements in %s: %w", db, err)
			}
		}
	}
	return e, nil
}

// close drops the databases and, after a good run unless -keep-logs, the
// logs.
func (e *benchEnv) close(ok bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, db := range []string{effectsDB, riverDB} {
		if _, err := e.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
			errs = append(errs, err)
		}
	}
	e.admin.Close(ctx)
	if ok && !e.c.keepLogs {
		errs = append(errs, os.RemoveAll(e.logDir))
	} else {
		fmt.Fprintf(os.Stderr, "effects-bench: the processes' logs are in %s\n", e.logDir)
	}
	return errors.Join(errs...)
}

// dbURL is the benchmark's URL with another database.
func (e *benchEnv) dbURL(db string) string {
	u, err := url.Parse(e.c.dbURL)
	if err != nil {
		return e.c.dbURL
	}
	u.Path = "/" + db
	return u.String()
}

// sampler is called every few seconds during a soak with the processes of
// the contender.
type sampler func(procs []*proc)

// runRiverContender runs River in its own process. With soak set, it runs
// only the soak phase it describes.
func (e *benchEnv) runRiverContender(ctx context.Context, soak *soakPlan) (result, error) {
	r := result{Name: "River", Unit: "jobs/s"}
	self, err := os.Executable()
	if err != nil {
		return r, err
	}
	args := []string{"river", "-db", e.dbURL(riverDB), "-workers", strconv.Itoa(e.c.riverWork), "-batch", strconv.Itoa(e.c.batch)}
	if e.c.profileDir != "" && soak == nil {
		path, err := filepath.Abs(filepath.Join(e.c.profileDir, "river.cpu.pprof"))
		if err != nil {
			return r, err
		}
		args = append(args, "-cpuprofile", path, "-profile-duration", e.c.profileFor.String())
	}
	p, err := startProc("river", e.logDir, self, args, nil, true)
	if err != nil {
		return r, err
	}
	defer p.stop(15 * time.Second)
	if _, err := p.expect("ready"); err != nil {
		return r, err
	}
	conn, err := pgx.Connect(ctx, e.dbURL(riverDB))
	if err != nil {
		return r, err
	}
	defer conn.Close(context.Background())
	procs := []*proc{p}
	m := measured{env: e, db: riverDB, procs: procs, loader: p, conn: conn}
	stats := func(ctx context.Context) (phaseStats, error) {
		return queryStats(ctx, conn, `SELECT count(*), count(*) FILTER (WHERE state <> 'completed'),
			coalesce(extract(epoch FROM max(finalized_at) - min(created_at)), 0),
			coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at)), 0),
			coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at)), 0),
			coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finalized_at - created_at)), 0)
			FROM river_job`)
	}
	truncate := func(ctx context.Context) error {
		_, err := conn.Exec(ctx, `TRUNCATE river_job`)
		return err
	}
	return m.run(ctx, r, soak, truncate, stats, nil)
}

// runEffectsContender runs the pipeline as in production: a nats-server,
// ingest, dispatcher and completer, each its own process, and the load
// generator in another.
func (e *benchEnv) runEffectsContender(ctx context.Context, mode string, soak *soakPlan) (result, error) {
	r := result{Name: map[string]string{"table": "table source", "webhook": "webhook", "ingest": "ingest alone"}[mode], Unit: "effects/s"}
	if mode == "ingest" {
		r.Unit = "POST/s"
	}
	dir := filepath.Join(e.logDir, mode)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return r, err
	}
	var ports [6]int
	for i := range ports {
		var err error
		if ports[i], err = freePort(); err != nil {
			return r, err
		}
	}
	natsAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	natsURL := "nats://" + natsAddr
	dbURL := e.dbURL(effectsDB)
	var procs []*proc
	defer func() {
		// In pipeline order: what feeds first stops first.
		for _, p := range procs {
			if err := p.stop(15 * time.Second); err != nil && !strings.Contains(err.Error(), "signal: terminated") {
				fmt.Fprintf(os.Stderr, "effects-bench: stopping %s: %v\n", p.name, err)
			}
		}
	}()
	natsArgs := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(ports[0]), "-js", "-sd", filepath.Join(dir, "nats")}
	profiling := e.c.profileDir != "" && soak == nil
	if profiling {
		natsArgs = append(natsArgs, "-profile", strconv.Itoa(ports[5]))
	}
	natsProc, err := startProc("nats-server", dir, e.c.natsServer, natsArgs, nil, false)
	if err != nil {
		return r, err
	}
	if err := waitTCP(ctx, natsProc, natsAddr, 20*time.Second); err != nil {
		_ = natsProc.stop(5 * time.Second)
		return r, err
	}
	common := append([]string{"NATS_URL=" + natsURL, "EFFECTS_LOG_LEVEL=warn", "EFFECTS_SHUTDOWN_TIMEOUT=10s"}, e.c.serviceEnv...)
	if profiling {
		common = append(common, "EFFECTS_PPROF=1")
	}
	if mode != "ingest" {
		cmd := exec.CommandContext(ctx, filepath.Join(e.c.bin, "completer"), "migrate")
		cmd.Env = append(childEnv(), append(common, "DATABASE_URL="+dbURL)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			_ = natsProc.stop(5 * time.Second)
			return r, fmt.Errorf("completer migrate: %w\n%s", err, out)
		}
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	admin := map[string]string{
		"ingest":     fmt.Sprintf("127.0.0.1:%d", ports[2]),
		"dispatcher": fmt.Sprintf("127.0.0.1:%d", ports[3]),
		"completer":  fmt.Sprintf("127.0.0.1:%d", ports[4]),
	}
	source := "webhook"
	if mode == "table" {
		source = "table"
	}
	services := []struct {
		name string
		env  []string
	}{
		{"ingest", []string{"EFFECTS_SOURCE=" + source, "EFFECTS_HTTP_ADDR=" + httpAddr, "EFFECTS_WEBHOOK_SECRET=" + webhookSecret, "DATABASE_URL=" + dbURL}},
		{"dispatcher", []string{"EFFECTS_CONCURRENCY=" + strconv.Itoa(e.c.concurrency)}},
		{"completer", []string{"DATABASE_URL=" + dbURL}},
	}
	if mode == "ingest" {
		services = services[:1]
		services[0].env = services[0].env[:3]
	}
	self, err := os.Executable()
	if err != nil {
		return r, err
	}
	loader, err := startProc("load", dir, self, []string{"load", "-mode", mode, "-db", dbURL,
		"-url", "http://" + httpAddr + "/hasura/events", "-secret", webhookSecret,
		"-batch", strconv.Itoa(e.c.batch), "-posters", strconv.Itoa(e.c.posters)}, nil, true)
	if err != nil {
		return r, err
	}
	procs = append(procs, loader)
	var svcProcs []*proc
	for _, s := range services {
		env := append(append([]string{}, common...), "EFFECTS_ADMIN_ADDR="+admin[s.name])
		p, err := startProc(s.name, dir, filepath.Join(e.c.bin, s.name), nil, append(env, s.env...), false)
		if err != nil {
			return r, err
		}
		procs = append(procs, p)
		svcProcs = append(svcProcs, p)
	}
	procs = append(procs, natsProc)
	for _, p := range svcProcs {
		if err := waitReady(ctx, p, "http://"+admin[p.name]+"/readyz", 30*time.Second); err != nil {
			return r, err
		}
	}
	if _, err := loader.expect("ready"); err != nil {
		return r, err
	}
	var conn *pgx.Conn
	if mode != "ingest" {
		if conn, err = pgx.Connect(ctx, dbURL); err != nil {
			return r, err
		}
		defer conn.Close(context.Background())
	}
	// Processes in the order of the report: load, services, nats-server.
	order := append([]*proc{loader}, svcProcs...)
	order = append(order, natsProc)
	m := measured{env: e, db: effectsDB, procs: order, loader: loader, conn: conn}
	if profiling {
		m.profiles = map[string]string{"nats-server": fmt.Sprintf("http://127.0.0.1:%d", ports[5])}
		for _, p := range svcProcs {
			m.profiles[p.name] = "http://" + admin[p.name]
		}
		m.profilePrefix = mode
	}
	if mode == "ingest" {
		m.db = ""
		return m.run(ctx, r, soak, nil, nil, nil)
	}
	stats := func(ctx context.Context) (phaseStats, error) {
		return queryStats(ctx, conn, `SELECT count(*), count(*) FILTER (WHERE status <> 'succeeded'),
			coalesce(extract(epoch FROM max(completed_at) - min(created_at)), 0),
			coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)), 0),
			coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)), 0),
			coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - created_at)), 0)
			FROM effects`)
	}
	truncate := func(ctx context.Context) error {
		_, err := conn.Exec(ctx, `TRUNCATE effects`)
		return err
	}
	nc, err := nats.Connect(natsURL, nats.Name("effects-bench"))
	if err != nil {
		return r, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return r, err
	}
	return m.run(ctx, r, soak, truncate, stats, &completionWatch{js: js, conn: conn})
}

// phaseStats is what the database says about a phase.
type phaseStats struct {
	N, NotDone    int
	Span          float64
	P50, P95, P99 float64
}

func queryStats(ctx context.Context, conn *pgx.Conn, q string) (phaseStats, error) {
	var s phaseStats
	err := conn.QueryRow(ctx, q).Scan(&s.N, &s.NotDone, &s.Span, &s.P50, &s.P95, &s.P99)
	return s, err
}

// measured runs the phases of one contender and measures them.
type measured struct {
	env *benchEnv
	// db is the contender's database, whose PostgreSQL backends are
	// measured; "" for none.
	db     string
	procs  []*proc
	loader *proc
	// conn is a connection to db, for pg_stat_statements.
	conn *pgx.Conn
	// profiles are the base URLs of the processes' /debug/pprof/, when
	// -profile asks for CPU profiles of the maximum-rate phase; they are
	// written to <-profile>/<profilePrefix>-<name>.cpu.pprof.
	profiles      map[string]string
	profilePrefix string
	onStart       func()
	// beforePhase and afterPhase, when set, run just before the phase's
	// first and just after its last CPU reading.
	beforePhase func() error
	afterPhase  func() error
}

// profile fetches a CPU profile of -profile-duration from each process
// and writes it; the returned function waits for them all.
func (m measured) profile(ctx context.Context) func() error {
	if len(m.profiles) == 0 {
		return func() error { return nil }
	}
	errc := make(chan error, len(m.profiles))
	for name, base := range m.profiles {
		go func() {
			url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, max(1, int(m.env.c.profileFor.Seconds())))
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				errc <- err
				return
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errc <- fmt.Errorf("profile of %s: %w", name, err)
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", url, resp.Status)
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(m.env.c.profileDir, m.profilePrefix+"-"+name+".cpu.pprof"), b, 0o644)
			}
			errc <- err
		}()
	}
	return func() error {
		var errs []error
		for range m.profiles {
			errs = append(errs, <-errc)
		}
		return errors.Join(errs...)
	}
}

// run runs the maximum-rate phase and then the half-rate phase (or, with
// soak, the soak alone). truncate empties the table before each phase;
// stats reads the finished phase from it; written, when not nil, counts
// the completions written so far (the completer's counter): the phase is
// over when it has grown by the phase's effects. Without it the phase is
// over when the loader says done (River counts its completed jobs itself;
// the ingest alone has nothing to complete).
func (m measured) run(ctx context.Context, r result, soak *soakPlan, truncate func(context.Context) error,
	stats func(context.Context) (phaseStats, error), watch *completionWatch) (result, error) {
	one := func(ph phase, sample sampler) (phaseStats, map[string]time.Duration, ingestResult, error) {
		var ir ingestResult
		if truncate != nil {
			if err := truncate(ctx); err != nil {
				return phaseStats{}, nil, ir, err
			}
		}
		var base uint64
		if watch != nil {
			var err error
			if base, err = watch.base(ctx); err != nil {
				return phaseStats{}, nil, ir, err
			}
		}
		if m.beforePhase != nil {
			if err := m.beforePhase(); err != nil {
				return phaseStats{}, nil, ir, err
			}
		}
		cpu0 := m.cpu(ctx)
		b, _ := json.Marshal(ph)
		if err := m.loader.send("phase " + string(b)); err != nil {
			return phaseStats{}, nil, ir, err
		}
		if m.onStart != nil {
			m.onStart()
		}
		loaderDone := make(chan error, 1)
		go func() {
			rest, err := m.loader.expect("done")
			if err == nil && rest != "" {
				err = json.Unmarshal([]byte(rest), &ir)
			}
			loaderDone <- err
		}()
		deadline := time.Now().Add(phaseTimeout(ph) + time.Minute)
		lastProgress, lastCount := time.Now(), uint64(0)
		nextSample := time.Now()
		for done := false; !done; {
			select {
			case <-ctx.Done():
				return phaseStats{}, nil, ir, ctx.Err()
			case err := <-loaderDone:
				if err != nil {
					return phaseStats{}, nil, ir, err
				}
				loaderDone = nil
			case <-time.After(100 * time.Millisecond):
			}
			for _, p := range m.procs {
				if p.exited() {
					return phaseStats{}, nil, ir, fmt.Errorf("%s exited during the phase (%v); its log:\n%s", p.name, p.exitErr(), tail(p.log, 30))
				}
			}
			if sample != nil && time.Now().After(nextSample) {
				sample(m.procs)
				nextSample = nextSample.Add(soakSampleEvery)
			}
			complete, stalled := watch == nil, false
			if watch != nil {
				var n uint64
				var err error
				complete, n, err = watch.check(ctx, base, ph.N)
				if err != nil {
					return phaseStats{}, nil, ir, err
				}
				if n != lastCount {
					lastCount, lastProgress = n, time.Now()
				}
				// No completion acknowledged for 2 minutes while effects
				// are outstanding: something is lost.
				stalled = time.Since(lastProgress) > 2*time.Minute
			}
			done = loaderDone == nil && complete
			if !done && (time.Now().After(deadline) || stalled) {
				return phaseStats{}, nil, ir, fmt.Errorf("phase of %d effects at rate %.0f not finished: %d completions taken by the completer; logs in %s", ph.N, ph.Rate, lastCount-base, m.env.logDir)
			}
		}
		cpu1 := m.cpu(ctx)
		if m.afterPhase != nil {
			if err := m.afterPhase(); err != nil {
				return phaseStats{}, nil, ir, err
			}
		}
		// Per process; PostgreSQL's backends summed, those that started
		// during the phase whole (those that ended during it are lost; the
		// pools keep theirs).
		delta := map[string]time.Duration{}
		for k, v := range cpu1 {
			d := v - cpu0[k]
			if strings.HasPrefix(k, "pg") {
				delta["postgres"] += d
			} else {
				delta[k] = d
			}
		}
		var st phaseStats
		if stats != nil {
			var err error
			if st, err = stats(ctx); err != nil {
				return st, nil, ir, err
			}
			if st.N != ph.N || st.NotDone != 0 {
				return st, nil, ir, fmt.Errorf("%d rows, %d of them not succeeded; want %d, all succeeded", st.N, st.NotDone, ph.N)
			}
		} else {
			st = phaseStats{N: ir.N, Span: ir.Seconds, P50: ir.P50, P95: ir.P95, P99: ir.P99}
		}
		return st, delta, ir, nil
	}

	if soak != nil {
		ph := phase{N: int(soak.rate * soak.length.Seconds()), Rate: soak.rate}
		st, _, _, err := one(ph, soak.sample)
		if err != nil {
			return r, err
		}
		r.N, r.Rate, r.P50, r.P95, r.P99 = st.N, float64(st.N)/st.Span, st.P50, st.P95, st.P99
		return r, nil
	}

	statements := m.env.statements && m.conn != nil
	if statements {
		m.beforePhase = func() error {
			_, err := m.conn.Exec(ctx, `SELECT pg_stat_statements_reset()`)
			return err
		}
		m.afterPhase = func() (err error) {
			r.Statements, err = topStatements(ctx, m.conn)
			return err
		}
	}
	profiled := func() error { return nil }
	m.onStart = func() { profiled = m.profile(ctx) }
	st, cpu, _, err := one(phase{N: m.env.c.effects}, nil)
	if err != nil {
		return r, err
	}
	if err := profiled(); err != nil {
		return r, err
	}
	m.onStart, m.beforePhase, m.afterPhase = nil, nil, nil
	r.N, r.P50, r.P95, r.P99 = st.N, st.P50, st.P95, st.P99
	if st.Span > 0 {
		r.Rate = float64(st.N) / st.Span
	}
	for _, p := range m.procs {
		hwm, _, _ := memOf(p.pid())
		pr := procResult{Name: p.name, Load: p.name == "load", CPU: -1, PeakRSS: hwm}
		if d, ok := cpu[p.name]; ok {
			pr.CPU = float64(d.Microseconds()) / float64(st.N)
		}
		r.Procs = append(r.Procs, pr)
	}
	if d, ok := cpu["postgres"]; ok {
		r.Procs = append(r.Procs, procResult{Name: "postgres", CPU: float64(d.Microseconds()) / float64(st.N)})
	} else if m.db != "" {
		// PostgreSQL runs elsewhere: its CPU is not known ("–").
		r.Procs = append(r.Procs, procResult{Name: "postgres", CPU: -1})
	}
	if m.env.c.halfFor > 0 && r.Rate > 0 && stats != nil {
		half := m.env.c.secondPhaseRate(r.Rate)
		hst, _, _, err := one(phase{N: max(1, int(half*m.env.c.halfFor.Seconds())), Rate: half}, nil)
		if err != nil {
			return r, fmt.Errorf("at half rate: %w", err)
		}
		r.HalfN, r.HalfP50, r.HalfP95, r.HalfP99 = hst.N, hst.P50, hst.P95, hst.P99
		if hst.Span > 0 {
			r.HalfRate = float64(hst.N) / hst.Span
		}
	}
	return r, nil
}

// cpu reads the CPU used so far by each process and, summed, by the
// PostgreSQL client backends connected to the contender's database (when
// PostgreSQL runs on this machine: a backend is counted only if its pid
// here is a postgres process).
func (m measured) cpu(ctx context.Context) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, p := range m.procs {
		if d, err := cpuOf(p.pid()); err == nil {
			out[p.name] = d
		}
	}
	if m.db == "" {
		return out
	}
	rows, err := m.env.admin.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'`, m.db)
	if err != nil {
		return out
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return out
	}
	for _, pid := range pids {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		if d, err := cpuOf(int(pid)); err == nil {
			out[fmt.Sprintf("pg%d", pid)] = d
		}
	}
	return out
}

// completionWatch tells when a phase's effects are all completed without
// scanning the table while it runs: it asks NATS for the completer's
// durable consumer (one small request to the nats-server, about every
// 100 ms), and only once that consumer has acknowledged every completion
// since the phase began (the completer acknowledges after the row's write
// committed) and at least one per effect does it confirm with one count of
// the pending rows, which the pending partial index holds.
type completionWatch struct {
	js   jetstream.JetStream
	conn *pgx.Conn
}

// consumerInfo is the completer's consumer on the completion stream.
func (w *completionWatch) consumerInfo(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	c, err := w.js.Consumer(ctx, completedStream, completerConsumer)
	if err != nil {
		return nil, fmt.Errorf("the completer's consumer %s on %s: %w", completerConsumer, completedStream, err)
	}
	return c.CachedInfo(), nil
}

// base is the stream sequence the completer has acknowledged up to, read
// before a phase starts.
func (w *completionWatch) base(ctx context.Context) (uint64, error) {
	info, err := w.consumerInfo(ctx)
	if err != nil {
		return 0, err
	}
	return info.AckFloor.Stream, nil
}

// check reports whether all n effects of the phase are completed, and how
// far the completer's acknowledgements have come (for the stall check).
func (w *completionWatch) check(ctx context.Context, base uint64, n int) (bool, uint64, error) {
	info, err := w.consumerInfo(ctx)
	if err != nil {
		return false, 0, err
	}
	floor := info.AckFloor.Stream
	if info.NumPending > 0 || info.NumAckPending > 0 || floor < base+uint64(n) {
		return false, floor, nil
	}
	var pending int
	if err := w.conn.QueryRow(ctx, `SELECT count(*) FROM effects WHERE status = 'pending'`).Scan(&pending); err != nil {
		return false, floor, err
	}
	return pending == 0, floor, nil
}

// The names the completer uses (internal/completer, pkg/effects).
const (
	completedStream   = "EFFECTS_COMPLETED"
	completerConsumer = "effects-completer"
)

func ms(s float64) string {
	if s >= 10 {
		return fmt.Sprintf("%.1f s", s)
	}
	return fmt.Sprintf("%.0f ms", s*1000)
}

// secondPhaseRate is the rate of the latency phase after a maximum of max:
// -half-rate when given, half the maximum otherwise.
func (c *config) secondPhaseRate(max float64) float64 {
	if c.halfRate > 0 {
		return c.halfRate
	}
	return max / 2
}
