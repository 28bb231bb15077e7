package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/pgcluster"
)

// PGCluster is a PostgreSQL server of the test's own, made with initdb and
// run with pg_ctl, for tests that stop and start PostgreSQL under a running
// service. It trusts every local connection and listens on 127.0.0.1 on a free
// port; its socket and data live in a temporary directory.
type PGCluster struct {
	// URL connects as the superuser "postgres" to the database "postgres".
	URL string
	// Port is the TCP port the server listens on (kept across Stop/Start).
	Port int

	bindir string
	dir    string // owned by the server's OS user
	data   string
	cred   *syscall.Credential // nil: run as the current user
}

// StartPGCluster makes and starts a private cluster, stopped and removed when
// the test ends. It fails the test (never skips it) when the PostgreSQL
// server binaries are missing, so a machine without them cannot pass.
func StartPGCluster(t testing.TB) *PGCluster {
	t.Helper()
	bindir, err := findPGBindir()
	if err != nil {
		t.Fatalf("private PostgreSQL cluster: %v", err)
	}
	c := &PGCluster{bindir: bindir}

	// PostgreSQL refuses to run as root, so under root it runs as the
	// "postgres" OS user the server packages create. Its directory is made
	// in the system temp dir rather than t.TempDir(), whose parents are
	// private to the test's user.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("private PostgreSQL cluster: running as root needs the OS user postgres (installed with the PostgreSQL server package): %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	c.dir, err = os.MkdirTemp("", "effects-pg-")
	if err != nil {
		t.Fatalf("private PostgreSQL cluster: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(c.dir) })
	if c.cred != nil {
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			t.Fatalf("private PostgreSQL cluster: %v", err)
		}
	}
	c.data = filepath.Join(c.dir, "data")

	// --no-sync: a test cluster need not survive a machine crash, and
	// initdb's fsyncs are most of its run time.
	if out, err := c.run(2*time.Minute, "initdb", "-D", c.data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"); err != nil {
		t.Fatalf("private PostgreSQL cluster: initdb: %v\n%s", err, out)
	}
	c.Port = FixedPort(t)
	c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port)
	t.Cleanup(func() {
		if out, err := c.run(time.Minute, "pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop"); err != nil &&
			!strings.Contains(string(out), "Is server running?") {
			t.Logf("private PostgreSQL cluster: stop: %v\n%s", err, out)
		}
	})
	c.Start(t)
	return c
}

// Start starts the server (again) on the same port and data and waits until
// it accepts connections.
func (c *PGCluster) Start(t testing.TB) {
	t.Helper()
	// fsync off and a small shared_buffers: a test cluster trades durability
	// for speed and several may run at once.
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB",
		c.Port, c.dir)
	out, err := c.run(2*time.Minute, "pg_ctl", "-D", c.data, "-l", filepath.Join(c.dir, "server.log"), "-o", opts, "-w", "-t", "60", "start")
	if err != nil {
		t.Fatalf("private PostgreSQL cluster: start: %v\n%s\n%s", err, out, c.serverLog())
	}
}

// Stop shuts the server down at once ("fast": connected clients are
// disconnected) and waits until it is gone.
func (c *PGCluster) Stop(t testing.TB) {
	t.Helper()
	if out, err := c.run(2*time.Minute, "pg_ctl", "-D", c.data, "-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		t.Fatalf("private PostgreSQL cluster: stop: %v\n%s\n%s", err, out, c.serverLog())
	}
}

func (c *PGCluster) serverLog() string {
	b, _ := os.ReadFile(filepath.Join(c.dir, "server.log"))
	return string(b)
}

func (c *PGCluster) run(timeout time.Duration, prog string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bindir, prog), args...)
	cmd.Dir = c.dir
	// A plain environment: the server inherits it, and PG* variables of the
	// test's would change what the tools connect to.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "LANG=C", "HOME=" + c.dir}
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// The server pg_ctl starts writes to its log file, not to our pipes,
	// but should one ever hold them, do not wait for it forever.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// findPGBindir finds the PostgreSQL server binaries the way `effects dev`
// does.
func findPGBindir() (string, error) { return pgcluster.FindBindir() }
