// Command testpg runs a command (the tests) with a PostgreSQL for them, so
// that `make test` passes on a machine where nothing runs yet:
//
//   - EFFECTS_TEST_DATABASE_URL set: the command runs with it as it is
//     (a PostgreSQL the user chose is never swapped for another);
//   - else the default (-default, internal/testenv's default: database test
//     on 127.0.0.1:5432) when it accepts a connection;
//   - else a private server started for the command's run, as `effects dev`
//     starts one (internal/pgcluster: initdb in a temporary directory, run as
//     the postgres OS user when root), with a database test.
//
// The command gets the choice in EFFECTS_TEST_DATABASE_URL. The private
// server is stopped and its directory removed when the command ends, fails
// or is interrupted (SIGINT, SIGTERM and SIGHUP are passed on to the command
// and waited for; a second one kills it). A testpg killed with SIGKILL leaves
// the directory behind, but the server gets SIGQUIT from the kernel.
//
// Usage:
//
//	go run ./internal/testpg [-default URL] [-dir dir] -- command [args...]
//
// `make test` runs the tests of all three modules under one testpg, so one
// private server serves the whole run; the inner `make check-deployments`
// and `make test-bench` run testpg again, which finds
// EFFECTS_TEST_DATABASE_URL set and changes nothing.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/pgcluster"
)

// URLEnv is the variable the tests read the PostgreSQL from (internal/testenv
// and the bench module's tests).
const URLEnv = "EFFECTS_TEST_DATABASE_URL"

// DefaultURL is internal/testenv.DefaultDatabaseURL (a test holds them
// equal; testpg does not import testenv, which would build nats-server into
// it).
const DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// probeTimeout bounds the look at the default PostgreSQL.
const probeTimeout = 5 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run is main without the exit: the command's exit code, or 2 for bad usage
// and 1 when no PostgreSQL could be had.
func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("testpg", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := fs.String("default", DefaultURL, "the PostgreSQL to use, when it answers and "+URLEnv+" is unset")
	dir := fs.String("dir", "", "run the command in this directory")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: testpg [-default URL] [-dir dir] -- command [args...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "testpg: "+format+"\n", a...) }

	// Signals are caught from the start, so that one arriving during
	// initdb still removes the directory.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	f := &forwarder{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	stopForwarding := make(chan struct{})
	wg.Go(func() { f.forward(sigs, cancel, stopForwarding) })
	defer func() { close(stopForwarding); wg.Wait() }()

	dbURL, stop, err := database(ctx, os.Getenv(URLEnv), *def, logf)
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer stop()
	if ctx.Err() != nil {
		logf("interrupted before the command started")
		return 130
	}

	cmd := exec.Command(fs.Arg(0), fs.Args()[1:]...)
	cmd.Dir = *dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), URLEnv+"="+dbURL)
	if err := f.start(cmd); err != nil {
		logf("%v", err)
		return 1
	}
	err = cmd.Wait()
	f.exited()
	return exitCode(err, logf)
}

// exitCode is the command's exit code, as a shell reports it: 128 plus the
// signal when a signal ended it.
func exitCode(err error, logf func(string, ...any)) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	logf("%v", err)
	return 1
}

// forwarder passes the signals testpg gets to the command: in a terminal a
// Ctrl-C reaches both, but a signal sent to testpg alone (by make, say)
// must reach the command too. Before the command runs a signal cancels the
// set-up; a second signal kills the command.
type forwarder struct {
	mu      sync.Mutex
	proc    *os.Process
	done    bool
	signals int
}

func (f *forwarder) start(cmd *exec.Cmd) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	f.proc = cmd.Process
	return nil
}

func (f *forwarder) exited() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.done = true
}

func (f *forwarder) forward(sigs <-chan os.Signal, cancel context.CancelFunc, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case sig := <-sigs:
			cancel()
			f.mu.Lock()
			f.signals++
			if f.proc != nil && !f.done {
				if f.signals > 1 {
					_ = f.proc.Kill()
				} else {
					_ = f.proc.Signal(sig)
				}
			}
			f.mu.Unlock()
		}
	}
}

// database chooses the PostgreSQL of the tests (see the package comment)
// and returns its URL and what undoes the choice: stopping and removing a
// private server, or nothing.
func database(ctx context.Context, explicit, def string, logf func(string, ...any)) (string, func(), error) {
	if explicit != "" {
		return explicit, func() {}, nil
	}
	reason := probe(ctx, def)
	if reason == nil {
		logf("the tests use the PostgreSQL at %s", where(def))
		return def, func() {}, nil
	}
	logf("no usable PostgreSQL at %s (%v); starting a private one for this run", where(def), reason)
	dbURL, stop, err := private(ctx, logf)
	if err != nil {
		return "", nil, fmt.Errorf("no PostgreSQL for the tests: set %s to a PostgreSQL of yours, or install the PostgreSQL server "+
			"package for a private one: nothing usable at %s (%v), and a private one did not start: %w", URLEnv, where(def), reason, err)
	}
	return dbURL, stop, nil
}

// probe connects to dbURL and runs a query: nil when it can serve the
// tests, else why not.
func probe(ctx context.Context, dbURL string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var one int
	return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
}

// where is host:port/database of a URL, for messages: never its password.
func where(dbURL string) string {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return "(an unparsable URL)"
	}
	return fmt.Sprintf("%s:%d/%s", cfg.Host, cfg.Port, cfg.Database)
}

// private starts a server in a new temporary directory and creates the
// database test in it.
func private(ctx context.Context, logf func(string, ...any)) (string, func(), error) {
	dir, err := os.MkdirTemp("", "effects-test-pg-")
	if err != nil {
		return "", nil, err
	}
	// Under root the server runs as the postgres user, which must be able
	// to pass through to its own subdirectory (as in `effects dev`).
	if err := os.Chmod(dir, 0o711); err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, err
	}
	started := time.Now()
	c, err := pgcluster.Start(ctx, filepath.Join(dir, "postgres"), 0)
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, err
	}
	stop := func() {
		// Immediate: the data is thrown away.
		c.Stop(true)
		if err := os.RemoveAll(dir); err != nil {
			logf("remove %s: %v", dir, err)
			return
		}
		logf("stopped the private PostgreSQL and removed %s", dir)
	}
	dbURL, err := createTestDatabase(ctx, c.URL)
	if err != nil {
		stop()
		return "", nil, err
	}
	logf("private PostgreSQL %s in %s (pid %d), started in %s", where(dbURL), dir, c.Pid, time.Since(started).Round(time.Millisecond))
	return dbURL, stop, nil
}

// createTestDatabase creates the database test on the server of adminURL
// and returns its URL.
func createTestDatabase(ctx context.Context, adminURL string) (string, error) {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE test"); err != nil {
		return "", fmt.Errorf("create database test: %w", err)
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", err
	}
	u.Path = "/test"
	return u.String(), nil
}
