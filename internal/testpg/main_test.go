package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/effects-run/effects/internal/testenv"
)

// The test binary plays three parts: the tests; testpg itself, run as a
// process of its own (wrapperEnv set), so that a test can signal it; and
// the command testpg runs (first argument helperArg).
const (
	wrapperEnv     = "TESTPG_TEST_AS_TESTPG"
	wrapperArgsEnv = "TESTPG_TEST_ARGS"
	helperArg      = "testpg-test-helper"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(helper(os.Args[2], os.Args[3]))
	}
	if os.Getenv(wrapperEnv) == "1" {
		os.Exit(run(strings.Split(os.Getenv(wrapperArgsEnv), "\n"), os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// helper is the command under testpg. It writes its EFFECTS_TEST_DATABASE_URL
// to file, then by mode: "print" exits 0; "use" creates a table in the
// database and exits 0; "fail" exits 3; "wait" writes its pid too and waits
// for SIGINT, then exits 130.
func helper(mode, file string) int {
	dbURL := os.Getenv(URLEnv)
	write := func(s string) int {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	switch mode {
	case "print":
		return write(dbURL)
	case "use":
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "CREATE TABLE testpg_helper (id int PRIMARY KEY)"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return write(dbURL)
	case "fail":
		write(dbURL)
		return 3
	case "wait":
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt)
		write(dbURL + "\n" + strconv.Itoa(os.Getpid()))
		<-sigs
		return 130
	}
	return 1
}

// helperCommand is the arguments of testpg that run helper in mode, and the
// file it writes.
func helperCommand(t *testing.T, mode string) ([]string, string) {
	file := filepath.Join(t.TempDir(), "url")
	return []string{"--", os.Args[0], helperArg, mode, file}, file
}

func readFile(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the command did not write its URL: %v", err)
	}
	return string(b)
}

// tempParent makes a directory for testpg's temporary directories (TMPDIR),
// which the postgres OS user can pass through when the tests run as root.
func tempParent(t *testing.T) string {
	t.Helper()
	_ = t.TempDir() // made now, before TMPDIR points elsewhere
	dir, err := os.MkdirTemp("", "testpg-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", dir)
	return dir
}

// assertRemoved checks that testpg left nothing in parent and that nothing
// answers at dbURL any more.
func assertRemoved(t *testing.T, parent, dbURL string) {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("testpg left %v in its temporary directory", entries)
	}
	if probe(context.Background(), dbURL) == nil {
		t.Errorf("the private PostgreSQL at %s still answers", dbURL)
	}
}

// deadURL is a PostgreSQL URL on a port where nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", port)
}

// The PostgreSQL the tests use: testpg's own run (make test) or the
// machine's.
func testDatabaseURL() string {
	if u := os.Getenv(URLEnv); u != "" {
		return u
	}
	return DefaultURL
}

func TestDefaultURLIsTestenvs(t *testing.T) {
	if DefaultURL != testenv.DefaultDatabaseURL {
		t.Errorf("DefaultURL = %q, testenv.DefaultDatabaseURL = %q: keep them equal", DefaultURL, testenv.DefaultDatabaseURL)
	}
}

// No private server: a URL the user set is passed on as it is, even one
// where nothing answers (no probe); a default that answers is used.
func TestNoPrivateServerWhenGivenOne(t *testing.T) {
	explicit, answering := deadURL(t), testDatabaseURL()
	for _, c := range []struct{ name, env, def, want string }{
		{"set", explicit, deadURL(t), explicit},
		{"default answers", "", answering, answering},
	} {
		t.Run(c.name, func(t *testing.T) {
			parent := tempParent(t)
			t.Setenv(URLEnv, c.env)
			args, file := helperCommand(t, "print")
			var stderr bytes.Buffer
			if code := run(append([]string{"-default", c.def}, args...), &stderr); code != 0 {
				t.Fatalf("exit %d\n%s", code, &stderr)
			}
			if got := readFile(t, file); got != c.want {
				t.Errorf("the command got %q, want %q", got, c.want)
			}
			if entries, _ := os.ReadDir(parent); len(entries) != 0 {
				t.Errorf("a private server was made: %v", entries)
			}
		})
	}
}

// With nothing at the default, the command gets a private server with a
// database test it can write to; when it ends, the server is gone.
func TestPrivateServerWhenNothingAnswers(t *testing.T) {
	parent := tempParent(t)
	def := deadURL(t)
	t.Setenv(URLEnv, "")
	args, file := helperCommand(t, "use")
	var stderr bytes.Buffer
	if code := run(append([]string{"-default", def}, args...), &stderr); code != 0 {
		t.Fatalf("exit %d\n%s", code, &stderr)
	}
	got := readFile(t, file)
	cfg, err := pgx.ParseConfig(got)
	if err != nil {
		t.Fatalf("the command got %q: %v", got, err)
	}
	if got == def || cfg.Database != "test" || cfg.Host != "127.0.0.1" {
		t.Errorf("the command got %q, want a private server's database test", got)
	}
	if !strings.Contains(stderr.String(), "no usable PostgreSQL at 127.0.0.1:") {
		t.Errorf("testpg did not say why it started a server:\n%s", &stderr)
	}
	assertRemoved(t, parent, got)
}

// A command that fails: its exit code is testpg's, and the server is
// removed all the same.
func TestFailingCommandStillRemovesTheServer(t *testing.T) {
	parent := tempParent(t)
	t.Setenv(URLEnv, "")
	args, file := helperCommand(t, "fail")
	var stderr bytes.Buffer
	if code := run(append([]string{"-default", deadURL(t)}, args...), &stderr); code != 3 {
		t.Fatalf("exit %d, want the command's 3\n%s", code, &stderr)
	}
	assertRemoved(t, parent, readFile(t, file))
}

// An interrupt, to testpg and its command (Ctrl-C in a terminal) or to
// testpg alone (which passes it on): the command ends, then testpg stops
// and removes the server.
func TestInterruptRemovesTheServer(t *testing.T) {
	for _, both := range []bool{true, false} {
		t.Run(fmt.Sprintf("both=%v", both), func(t *testing.T) {
			parent := tempParent(t)
			args, file := helperCommand(t, "wait")
			p := testenv.StartProcess(t, wrapperEnv, map[string]string{
				"TMPDIR":       parent,
				wrapperArgsEnv: strings.Join(append([]string{"-default", deadURL(t)}, args...), "\n"),
			})
			var lines []string
			p.WaitFor(t, "the command's URL and pid", func() bool {
				b, _ := os.ReadFile(file)
				lines = strings.Split(string(b), "\n")
				return len(lines) == 2
			})
			dbURL := lines[0]
			if err := probe(context.Background(), dbURL); err != nil {
				t.Fatalf("the private server does not answer while the command runs: %v", err)
			}
			p.Signal(t, os.Interrupt)
			if both {
				// Ctrl-C in a terminal signals the whole foreground
				// group: the command gets it from there as well as
				// from testpg.
				pid, _ := strconv.Atoi(lines[1])
				if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
					t.Fatal(err)
				}
			}
			if code := p.Wait(t); code != 130 {
				t.Errorf("exit %d, want the command's 130\n%s", code, p.Output())
			}
			assertRemoved(t, parent, dbURL)
		})
	}
}

// Without a command testpg says how to call it and exits 2, before it
// looks at any PostgreSQL.
func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"-default", deadURL(t)}, {"-no-such-flag", "--", "true"}} {
		var stderr bytes.Buffer
		if code := run(args, &stderr); code != 2 || !strings.Contains(stderr.String(), "usage: testpg") {
			t.Errorf("%q: exit %d, want 2 and the usage\n%s", args, code, &stderr)
		}
	}
}
