package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDev runs `effects dev` the way a newcomer does: the built binary,
// without DATABASE_URL; inserts a row with SQL, sees it completed, presses
// Ctrl-C and finds no process left behind.
// devProcess is a running `effects dev`.
type devProcess struct {
	cmd    *exec.Cmd
	vars   map[string]string // DATABASE_URL, NATS_URL
	banner string
	pgPid  int
	lines  <-chan string
	exited <-chan error
	stderr *syncBuffer
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// startDev builds the binary (once) and runs `effects dev` without
// DATABASE_URL until it printed its banner.
func startDev(t *testing.T) *devProcess {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "effects-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "effects")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	cmd := exec.Command(binPath, "dev", "-nats-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no DATABASE_URL
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})

	// The settings, ready for the shell, then the rest of the banner.
	vars := map[string]string{}
	var banner []string
	deadline := time.After(3 * time.Minute)
	for !strings.HasPrefix(last(banner), "# Ctrl-C") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("effects dev exited before it was ready\n%s\n%s", strings.Join(banner, "\n"), stderr.String())
			}
			banner = append(banner, l)
			if k, v, ok := strings.Cut(l, "="); ok && (k == "DATABASE_URL" || k == "NATS_URL") {
				vars[k] = strings.Trim(v, "'")
			}
		case <-deadline:
			t.Fatalf("not ready in 3 minutes\n%s", stderr.String())
		}
	}
	d := &devProcess{cmd: cmd, vars: vars, banner: strings.Join(banner, "\n"), lines: lines, exited: exited, stderr: stderr}
	if m := regexp.MustCompile(`\(pid (\d+)\)`).FindStringSubmatch(d.banner); m != nil {
		d.pgPid, _ = strconv.Atoi(m[1])
	}
	if d.pgPid == 0 {
		t.Fatalf("the banner does not name the private PostgreSQL's pid:\n%s", d.banner)
	}
	return d
}

// TestDev runs `effects dev` the way a newcomer does: the built binary,
// without DATABASE_URL; inserts a row with SQL, sees it completed, presses
// Ctrl-C and finds no process left behind.
func TestDev(t *testing.T) {
	d := startDev(t)
	t.Logf("banner:\n%s", d.banner)
	vars, pid, stderr := d.vars, d.pgPid, d.stderr
	if vars["DATABASE_URL"] == "" || !strings.HasPrefix(vars["NATS_URL"], "nats://") {
		t.Fatalf("want DATABASE_URL= and NATS_URL= lines, got %v", vars)
	}
	if !strings.HasPrefix(d.banner, "DATABASE_URL=") {
		t.Errorf("the banner does not start with DATABASE_URL=")
	}
	if !strings.Contains(d.banner, `psql "$DATABASE_URL" -c "INSERT INTO effects`) {
		t.Errorf("no ready-to-paste psql line")
	}
	cmd, lines, exited := d.cmd, d.lines, d.exited

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, vars["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	var id string
	if err := conn.QueryRow(ctx, `INSERT INTO effects (kind, payload) VALUES ('echo', '{"hello": "world"}') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	var status, completion string
	for status != "succeeded" {
		if err := conn.QueryRow(ctx, `SELECT status, coalesce(completion::text, '') FROM effects WHERE id = $1`, id).Scan(&status, &completion); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if completion != `{"hello": "world"}` {
		t.Errorf("completion %s", completion)
	}
	conn.Close(ctx)

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("effects dev: %v\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("still running a minute after Ctrl-C\n%s", stderr.String())
	}
	// The server and its children are gone (not even zombies: effects dev
	// waited for its child, and the server for its own).
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		t.Errorf("postgres (pid %d) is still running after effects dev exited", pid)
	}
	if c, err := pgx.Connect(ctx, vars["DATABASE_URL"]); err == nil {
		c.Close(ctx)
		t.Error("PostgreSQL still accepts connections after effects dev exited")
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"--version"}, {"dev", "--help"}} {
		var out, errOut strings.Builder
		if code := run(args, &out, &errOut); code != 0 || out.Len()+errOut.Len() == 0 {
			t.Errorf("%v: exit %d, printed %q %q", args, code, out.String(), errOut.String())
		}
	}
	if code := run([]string{"serve"}, io.Discard, io.Discard); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A kill -9 of `effects dev` leaves no PostgreSQL behind either: the kernel
// sends the server SIGQUIT when its parent dies.
func TestDevKilledLeavesNoPostgres(t *testing.T) {
	d := startDev(t)
	if m := regexp.MustCompile(`private cluster in (\S+) `).FindStringSubmatch(d.banner); m != nil {
		t.Cleanup(func() { _ = os.RemoveAll(filepath.Dir(m[1])) }) // a killed effects dev cannot remove it
	}
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	for range d.lines {
	}
	<-d.exited
	deadline := time.Now().Add(time.Minute)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(d.pgPid) + "/stat")
		// Gone, or a zombie waiting for init to reap it.
		if err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres (pid %d) still runs a minute after effects dev was killed", d.pgPid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}
