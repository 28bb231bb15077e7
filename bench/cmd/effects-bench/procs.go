package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux the Go runtime supports).
const clockTick = 10 * time.Millisecond

// cpuOf is the CPU time (user and system) process pid has used so far, read
// from /proc/<pid>/stat.
func cpuOf(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count the fields after its closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the name: state is field 3, utime field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// memOf reads VmHWM (peak resident set) and VmRSS (resident now) of pid
// from /proc/<pid>/status, in bytes.
func memOf(pid int) (hwm, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || (name != "VmHWM" && name != "VmRSS") {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status %s: %w", pid, name, err)
		}
		if name == "VmHWM" {
			hwm = kb << 10
		} else {
			rss = kb << 10
		}
	}
	return hwm, rss, nil
}

// proc is a child process of the benchmark: a service, the nats-server, a
// load generator or River. Its output goes to a log file; a child that
// talks to the driver (load generators, River) does so on stdin and
// stdout.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	// in and out are the child's stdin and stdout, for the children that
	// speak the driver's line protocol.
	in   io.WriteCloser
	out  *bufio.Reader
	done chan struct{}
	err  error
}

// startProc starts path with args and env (added to a cleaned copy of the
// driver's environment), logging stderr (and stdout unless talk) to
// <logDir>/<name>.log.
func startProc(name, logDir, path string, args []string, env []string, talk bool) (*proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(childEnv(), env...)
	cmd.Stderr = lf
	// Its own process group, so that Ctrl-C on the driver reaches the
	// driver only, which then stops its children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	if talk {
		if p.in, err = cmd.StdinPipe(); err != nil {
			lf.Close()
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			lf.Close()
			return nil, err
		}
		p.out = bufio.NewReader(out)
	} else {
		cmd.Stdout = lf
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// childEnv is the driver's environment without the settings the benchmark
// gives its children itself, so that a NATS_URL or DATABASE_URL of the
// shell cannot point a service elsewhere. GOGC, GOMEMLIMIT and the like
// pass through.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "EFFECTS_") || k == "NATS_URL" || k == "DATABASE_URL" || strings.HasPrefix(k, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace for the exit, then kills.
func (p *proc) stop(grace time.Duration) error {
	if p.in != nil {
		// A child that talks to the driver ends at the end of its input.
		p.in.Close()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	}
	if p.exited() {
		return p.exitErr()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.exitErr()
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s after SIGTERM; killed", p.name, grace)
	}
}

func (p *proc) exitErr() error {
	if p.err != nil {
		return fmt.Errorf("%s: %w", p.name, p.err)
	}
	return nil
}

// send writes one line to the child.
func (p *proc) send(line string) error {
	_, err := io.WriteString(p.in, line+"\n")
	return err
}

// expect reads the child's next line and returns its rest after the word
// want ("ready", "done {...}"). A child that exits or says something else
// is an error that quotes its log.
func (p *proc) expect(want string) (string, error) {
	line, err := p.out.ReadString('\n')
	if err != nil {
		<-p.done
		return "", fmt.Errorf("%s stopped before %q (%v); its log:\n%s", p.name, want, p.exitErr(), tail(p.log, 30))
	}
	line = strings.TrimSuffix(line, "\n")
	word, rest, _ := strings.Cut(line, " ")
	if word != want {
		return "", fmt.Errorf("%s said %q, want %q; its log:\n%s", p.name, line, want, tail(p.log, 30))
	}
	return rest, nil
}

// tail is the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls url until it answers 200, the process exits, or timeout.
func waitReady(ctx context.Context, p *proc, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("%s exited while starting (%v); its log:\n%s", p.name, p.exitErr(), tail(p.log, 30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s after %s; its log:\n%s", p.name, url, timeout, tail(p.log, 30))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitTCP waits until addr accepts connections.
func waitTCP(ctx context.Context, p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited while starting (%v); its log:\n%s", p.name, p.exitErr(), tail(p.log, 30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %s", p.name, addr, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
