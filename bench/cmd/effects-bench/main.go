// Command effects-bench runs the side-by-side benchmark of `make bench`:
// River and the effects pipeline (table source, webhook path, ingest alone)
// in one run, on the same PostgreSQL, each contender in processes of its
// own, and writes the table and a chart (docs/bench/latest.md and .png).
//
// It lives in a Go module of its own (bench/) so that the main module does
// not depend on River or on the plotting library. It does not import the
// effects code either: it runs the real binaries (make build) and the
// pinned nats-server (make nats-server), as in production.
//
//	effects-bench [flags]          the driver (see -help)
//	effects-bench river [flags]    the River contender (started by the driver)
//	effects-bench load [flags]     an effects load generator (started by the driver)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	var err error
	switch {
	case len(os.Args) > 1 && os.Args[1] == "river":
		err = runRiver(os.Args[2:])
	case len(os.Args) > 1 && os.Args[1] == "load":
		err = runLoad(os.Args[2:])
	default:
		err = runDriver(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "effects-bench: %v\n", err)
		os.Exit(1)
	}
}

// config are the driver's flags.
type config struct {
	bin         string
	natsServer  string
	dbURL       string
	out         string
	effects     int
	halfFor     time.Duration
	halfRate    float64 // fixed rate of the second phase; 0: half the maximum
	contenders  []string
	batch       int
	posters     int
	concurrency int
	riverWork   int
	serviceEnv  []string
	keepLogs    bool
	soak        bool
	soakFor     time.Duration
	soakRate    float64
	soakWhat    string
	command     string
	updateDocs  bool
	profileDir  string
	profileFor  time.Duration
}

// defaultDatabaseURL is where the benchmark finds PostgreSQL unless
// EFFECTS_BENCH_DATABASE_URL says otherwise. It creates (and at the end
// drops) databases of its own there.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func runDriver(args []string) error {
	fs := flag.NewFlagSet("effects-bench", flag.ExitOnError)
	var c config
	var contenders, serviceEnv string
	var long bool
	fs.StringVar(&c.bin, "bin", "bin", "directory of the ingest, dispatcher and completer binaries (make build)")
	fs.StringVar(&c.natsServer, "nats-server", "", "the nats-server binary (default <bin>/tools/nats-server, from make nats-server)")
	fs.StringVar(&c.out, "out", "docs/bench", `directory for latest.md and latest.png (soak.md and soak.png with -soak); "" writes none`)
	fs.IntVar(&c.effects, "effects", 50000, "effects (River: jobs) per contender at the maximum rate")
	fs.DurationVar(&c.halfFor, "half", 10*time.Second, "length of the second phase, at half each contender's maximum rate (latency); 0 skips it")
	fs.Float64Var(&c.halfRate, "half-rate", 0, "effects/s of the second phase instead of half each contender's maximum: the latency of two builds (-bin) at the same rate")
	fs.BoolVar(&long, "long", false, "a longer run: -effects 300000 -half 60s (unless given)")
	fs.StringVar(&contenders, "contenders", "river,table,webhook,ingest", "which contenders to run, in order: river, table, webhook, ingest")
	fs.IntVar(&c.batch, "batch", 5000, "rows (River: jobs) per COPY batch at the maximum rate")
	fs.IntVar(&c.posters, "posters", 100, "concurrent webhook POSTs (Hasura's default pool is 100)")
	fs.IntVar(&c.concurrency, "concurrency", 256, "the dispatcher's EFFECTS_CONCURRENCY")
	fs.IntVar(&c.riverWork, "river-workers", 2000, "River's MaxWorkers")
	fs.StringVar(&serviceEnv, "service-env", "", "extra environment for ingest, dispatcher and completer, comma-separated K=V (e.g. GOGC=400,EFFECTS_COMPLETER_LINGER=30ms)")
	fs.BoolVar(&c.keepLogs, "keep-logs", false, "keep the processes' logs (their directory is printed) instead of removing them after a good run")
	fs.BoolVar(&c.updateDocs, "update-docs", true, "with -out docs/bench: also replace the table between the bench:latest markers of README.md and docs/performance.md (run from the repository's root)")
	fs.StringVar(&c.profileDir, "profile", "", "directory for CPU profiles of each process during the first -profile-seconds of the maximum-rate phase (the services run with EFFECTS_PPROF=1, nats-server with -profile); profiling costs CPU, so take the numbers of such a run with care")
	fs.DurationVar(&c.profileFor, "profile-duration", 10*time.Second, "length of each CPU profile")
	fs.BoolVar(&c.soak, "soak", false, "instead of the comparison: run one contender (-soak-contender) at half its maximum rate for -soak-duration, sampling each process's memory")
	fs.DurationVar(&c.soakFor, "soak-duration", 10*time.Minute, "length of the soak")
	fs.Float64Var(&c.soakRate, "soak-rate", 0, "effects/s of the soak (default: half the maximum measured first)")
	fs.StringVar(&c.soakWhat, "soak-contender", "table", "contender of the soak: table, webhook or river")
	_ = fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if long {
		if !set["effects"] {
			c.effects = 300000
		}
		if !set["half"] {
			c.halfFor = 60 * time.Second
		}
	}
	c.contenders = splitList(contenders)
	for _, name := range c.contenders {
		if !validContender(name) {
			return fmt.Errorf("-contenders: unknown %q (want river, table, webhook, ingest)", name)
		}
	}
	c.serviceEnv = splitList(serviceEnv)
	for _, kv := range c.serviceEnv {
		if !strings.Contains(kv, "=") {
			return fmt.Errorf("-service-env: %q is not K=V", kv)
		}
	}
	c.dbURL = os.Getenv("EFFECTS_BENCH_DATABASE_URL")
	if c.dbURL == "" {
		c.dbURL = defaultDatabaseURL
	}
	if c.natsServer == "" {
		c.natsServer = filepath.Join(c.bin, "tools", "nats-server")
	}
	c.command = commandLine(fs)
	c.updateDocs = c.updateDocs && filepath.Clean(c.out) == filepath.Join("docs", "bench")
	if c.effects < 1 || c.batch < 1 || c.posters < 1 {
		return errors.New("-effects, -batch and -posters must be positive")
	}
	for _, b := range []string{filepath.Join(c.bin, "ingest"), filepath.Join(c.bin, "dispatcher"), filepath.Join(c.bin, "completer"), c.natsServer} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s: %w (make build nats-server makes them)", b, err)
		}
	}
	if c.profileDir != "" {
		if err := os.MkdirAll(c.profileDir, 0o755); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if c.soak {
		return runSoak(ctx, c)
	}
	return runComparison(ctx, c)
}

func validContender(name string) bool {
	switch name {
	case "river", "table", "webhook", "ingest":
		return true
	}
	return false
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// commandLine is how the report names the run: `make bench` with the flags
// given, less the paths the Makefile passes.
func commandLine(fs *flag.FlagSet) string {
	var flags []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "bin", "nats-server":
			return
		}
		flags = append(flags, "-"+f.Name+"="+f.Value.String())
	})
	if len(flags) == 0 {
		return "make bench"
	}
	return "make bench BENCHFLAGS='" + strings.Join(flags, " ") + "'"
}
