// Package pgcluster runs a private PostgreSQL server: initdb into a
// directory, then the postgres server as a child process on 127.0.0.1. It is
// what `effects dev` uses when DATABASE_URL is unset.
//
// PostgreSQL refuses to run as root, so under root it runs as the OS user
// "postgres" that the server packages create. The server is a child of this
// process in a process group of its own (a Ctrl-C in the terminal reaches
// only this process, which stops the server in order) and is sent SIGQUIT
// by the kernel should this process die without stopping it.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/retry"
)

// ErrNotInstalled is returned (wrapped) when the PostgreSQL server binaries
// are not found. Callers add the variable that names a PostgreSQL instead
// (DATABASE_URL for `effects dev`, EFFECTS_TEST_DATABASE_URL for the tests).
var ErrNotInstalled = errors.New("the PostgreSQL server (initdb, postgres) is not installed: " +
	"install it (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; " +
	"macOS: brew install postgresql)")

// Cluster is a running private server.
type Cluster struct {
	// URL connects as the superuser "postgres" to the database "postgres".
	URL string
	// Dir holds the data directory, the socket and the server log.
	Dir string
	// Pid is the server's process id.
	Pid int

	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start initialises dir (unless it already holds a cluster) and starts a
// server on 127.0.0.1:port (0: a free port). dir is created if missing, and
// under root handed to the "postgres" OS user.
func Start(ctx context.Context, dir string, port int) (*Cluster, error) {
	bindir, err := FindBindir()
	if err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("PostgreSQL refuses to run as root and there is no OS user \"postgres\" to run it as "+
				"(the PostgreSQL server package creates it): %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); err != nil {
		out, err := run(ctx, cred, dir, filepath.Join(bindir, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
			"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
		if err != nil {
			return nil, fmt.Errorf("initdb: %w\n%s", err, out)
		}
	}
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	logf, err := os.OpenFile(filepath.Join(dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(filepath.Join(bindir, "postgres"), "-D", data, "-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	cmd.Dir = dir
	cmd.Env = plainEnv(dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	c := &Cluster{
		URL: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
		Dir: dir, Pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}),
	}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	if err := c.waitAccepting(ctx); err != nil {
		c.Stop(true)
		log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		return nil, fmt.Errorf("postgres did not start: %w\n%s", err, log)
	}
	return c, nil
}

func (c *Cluster) waitAccepting(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, 60*time.Second)
	defer cancel()
	err := retry.Do(ctx, retry.Policy{Min: 50 * time.Millisecond, Max: 200 * time.Millisecond}, func(ctx context.Context) error {
		select {
		case <-c.done:
			return retry.Stop(fmt.Errorf("postgres exited: %v", c.err))
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, c.URL)
		if err == nil {
			_ = conn.Close(context.Background())
		}
		return err
	}, nil)
	if err != nil && parent.Err() != nil {
		return parent.Err()
	}
	return err
}

// Stop stops the server and waits for it: a fast shutdown (SIGINT: clients
// disconnected, then a clean stop), or an immediate one (SIGQUIT) when
// immediate is set or the fast one takes over 30s.
func (c *Cluster) Stop(immediate bool) {
	sig := syscall.SIGINT
	if immediate {
		sig = syscall.SIGQUIT
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
		return
	case <-time.After(30 * time.Second):
	}
	_ = c.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// Done is closed when the server exited.
func (c *Cluster) Done() <-chan struct{} { return c.done }

func run(ctx context.Context, cred *syscall.Credential, dir, prog string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = dir
	cmd.Env = plainEnv(dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// plainEnv: the server inherits it, and PG* variables would change what the
// tools do.
func plainEnv(dir string) []string {
	return []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "LANG=C", "HOME=" + dir}
}

// FindBindir finds the directory holding initdb, pg_ctl and postgres:
// pg_config's answer, else the newest /usr/lib/postgresql/<version>/bin
// (Debian keeps them off PATH), else initdb on PATH. The error wraps
// [ErrNotInstalled].
func FindBindir() (string, error) {
	has := func(dir string) bool {
		for _, p := range []string{"initdb", "pg_ctl", "postgres"} {
			if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
				return false
			}
		}
		return true
	}
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgConfig, "--bindir").Output(); err == nil {
			if dir := strings.TrimSpace(string(out)); has(dir) {
				return dir, nil
			}
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, dir := range dirs {
		if has(dir) {
			return dir, nil
		}
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if resolved, err := filepath.EvalSymlinks(initdb); err == nil && has(filepath.Dir(resolved)) {
			return filepath.Dir(resolved), nil
		}
	}
	return "", fmt.Errorf("looked at pg_config --bindir, /usr/lib/postgresql/*/bin and PATH: %w", ErrNotInstalled)
}

// pgMajor is the version number in /usr/lib/postgresql/<version>/bin.
func pgMajor(bindir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(bindir)))
	return n
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
