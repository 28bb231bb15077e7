package testenv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// ProcessTimeout bounds every wait for a child process; generous for the
// race detector on a loaded machine.
const ProcessTimeout = 30 * time.Second

// Process is the test binary re-run as a child process, which its TestMain
// turns into the program under test when the selector variable is set.
type Process struct {
	cmd            *exec.Cmd
	stdin          io.WriteCloser // nil unless started with StartProcessWithStdin
	stdout, stderr SyncBuffer
	done           chan struct{} // closed when it exited
	err            error         // of Wait, once done is closed
}

// ChildEnv is the environment of a child process: of the test's
// environment only PATH, then selector=1 (unless selector is ""), then env.
func ChildEnv(selector string, env map[string]string) []string {
	out := []string{"PATH=" + os.Getenv("PATH")}
	if selector != "" {
		out = append(out, selector+"=1")
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// StartProcess runs the test binary (os.Args[0]) with the environment
// ChildEnv(selector, env). It is killed when the test ends.
func StartProcess(t testing.TB, selector string, env map[string]string) *Process {
	t.Helper()
	return startProcess(t, selector, env, false)
}

// StartProcessWithStdin is StartProcess with a pipe to the child's stdin,
// written with Stdin.
func StartProcessWithStdin(t testing.TB, selector string, env map[string]string) *Process {
	t.Helper()
	return startProcess(t, selector, env, true)
}

// StartBinary runs the program at path with args and the environment
// ChildEnv("", env): a binary built by the test rather than the test
// binary. It is killed when the test ends.
func StartBinary(t testing.TB, path string, args []string, env map[string]string) *Process {
	t.Helper()
	return startCommand(t, exec.Command(path, args...), "", env, false)
}

func startProcess(t testing.TB, selector string, env map[string]string, withStdin bool) *Process {
	t.Helper()
	return startCommand(t, exec.Command(os.Args[0]), selector, env, withStdin)
}

func startCommand(t testing.TB, cmd *exec.Cmd, selector string, env map[string]string, withStdin bool) *Process {
	t.Helper()
	p := &Process{done: make(chan struct{}), cmd: cmd}
	p.cmd.Env = ChildEnv(selector, env)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.WaitDelay = 5 * time.Second
	if withStdin {
		stdin, err := p.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p.stdin = stdin
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// Wait waits for the process to exit and returns its exit code.
func (p *Process) Wait(t testing.TB) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(ProcessTimeout):
		t.Fatalf("still running after %s\n%s", ProcessTimeout, p.Output())
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", p.err)
	return -1
}

// Signal sends sig to the process.
func (p *Process) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s: %v", sig, err)
	}
}

// Done is closed when the process exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the error of waiting for the process, once Done is closed.
func (p *Process) Err() error { return p.err }

// Stdin is the pipe to the process's stdin (nil unless started with
// StartProcessWithStdin).
func (p *Process) Stdin() io.Writer { return p.stdin }

// Stdout is what the process wrote to stdout so far.
func (p *Process) Stdout() string { return p.stdout.String() }

// Stderr is what the process wrote to stderr so far.
func (p *Process) Stderr() string { return p.stderr.String() }

// Output is stdout and stderr so far, for failure messages.
func (p *Process) Output() string {
	return "stdout:\n" + p.stdout.String() + "stderr:\n" + p.stderr.String()
}

// String is Output.
func (p *Process) String() string { return p.Output() }

// WaitFor polls cond until it holds; it fails the test when the process
// exits or the deadline passes first.
func (p *Process) WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ProcessTimeout)
	for !cond() {
		select {
		case <-p.done:
			if cond() {
				return
			}
			t.Fatalf("exited (%v) before %s\n%s", p.err, what, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s in %s\n%s", what, ProcessTimeout, p.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Lines parses stderr as JSON lines, skipping what is not JSON.
func (p *Process) Lines() []map[string]any {
	var lines []map[string]any
	for _, raw := range strings.Split(p.stderr.String(), "\n") {
		var l map[string]any
		if json.Unmarshal([]byte(raw), &l) == nil {
			lines = append(lines, l)
		}
	}
	return lines
}

// HasLog reports whether a JSON log line with msg was written.
func (p *Process) HasLog(msg string) bool {
	for _, l := range p.Lines() {
		if l["msg"] == msg {
			return true
		}
	}
	return false
}

// WaitForLog waits for the first JSON log line with msg and returns it.
func (p *Process) WaitForLog(t testing.TB, msg string) map[string]any {
	t.Helper()
	var found map[string]any
	p.WaitFor(t, fmt.Sprintf("a %q line", msg), func() bool {
		for _, l := range p.Lines() {
			if l["msg"] == msg {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// LogAttr waits for the log line msg and returns its string attribute key
// ("" when it is not a string).
func (p *Process) LogAttr(t testing.TB, msg, key string) string {
	t.Helper()
	v, _ := p.WaitForLog(t, msg)[key].(string)
	return v
}

// LoopbackAddr waits for the log line msg and returns its attribute key,
// an address the process listens on, which must be on 127.0.0.1.
func (p *Process) LoopbackAddr(t testing.TB, msg, key string) string {
	t.Helper()
	addr := p.LogAttr(t, msg, key)
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("%q: %s is %q, want the address it was given", msg, key, addr)
	}
	return addr
}

// FindLog checks that all of stderr is JSON log lines of service (with
// service=service and a level) and returns the first line with msg, or nil.
func (p *Process) FindLog(t testing.TB, service, msg string) map[string]any {
	t.Helper()
	var found map[string]any
	for _, raw := range strings.Split(strings.TrimSuffix(p.stderr.String(), "\n"), "\n") {
		var l map[string]any
		if err := json.Unmarshal([]byte(raw), &l); err != nil || l["service"] != service || l["level"] == nil {
			t.Errorf("not a JSON log line of the %s: %s", service, raw)
			continue
		}
		if found == nil && l["msg"] == msg {
			found = l
		}
	}
	return found
}

var httpClient = &http.Client{Timeout: 15 * time.Second}

// HTTPGet GETs url and returns the status code and body; it fails the test
// when there is no answer.
func HTTPGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := httpClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// MergeEnv returns the union of ms; later maps win.
func MergeEnv(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		maps.Copy(out, m)
	}
	return out
}

// SyncBuffer is a bytes.Buffer safe for concurrent use: a child's output,
// or a logger's, is written into it while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
