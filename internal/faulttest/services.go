package faulttest

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/testenv"
)

// Binaries are the service binaries built for a test run.
type Binaries struct {
	Dir                           string
	Ingest, Dispatcher, Completer string
}

// Build builds the ingest, dispatcher and completer into a new directory
// under os.TempDir (call it once, from TestMain, and remove Dir after the
// run). FAULTS_RACE=1 builds them with the race detector. The go command
// runs in the caller's working directory, which must be inside the module.
func Build() (Binaries, error) {
	dir, err := os.MkdirTemp("", "effects-faults-bin-")
	if err != nil {
		return Binaries{}, err
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	if os.Getenv("FAULTS_RACE") == "1" {
		args = append(args, "-race")
	}
	const mod = "github.com/effects-run/effects/cmd/"
	args = append(args, mod+"ingest", mod+"dispatcher", mod+"completer")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return Binaries{}, fmt.Errorf("go build: %v\n%s", err, out)
	}
	return Binaries{
		Dir:        dir,
		Ingest:     filepath.Join(dir, "ingest"),
		Dispatcher: filepath.Join(dir, "dispatcher"),
		Completer:  filepath.Join(dir, "completer"),
	}, nil
}

// Service is one service binary run as an OS process, which a test can kill,
// stop and start again with the same environment.
type Service struct {
	Name string
	Path string
	Env  map[string]string

	proc *testenv.Process
	// Admin is the admin address (host:port) of the running process.
	Admin string
	// past holds the output of processes already gone, for failure
	// messages.
	past []string
}

// NewService describes a service; Start runs it.
func NewService(name, path string, env map[string]string) *Service {
	return &Service{Name: name, Path: path, Env: maps.Clone(env)}
}

// Start runs the service (again) and waits until it logged its admin
// address. EFFECTS_ADMIN_ADDR is 127.0.0.1:0 unless Env sets it.
func (s *Service) Start(t testing.TB) {
	t.Helper()
	env := maps.Clone(s.Env)
	if env["EFFECTS_ADMIN_ADDR"] == "" {
		env["EFFECTS_ADMIN_ADDR"] = "127.0.0.1:0"
	}
	if s.proc != nil {
		s.past = append(s.past, s.proc.Output())
	}
	s.proc = testenv.StartBinary(t, s.Path, nil, env)
	s.Admin = s.proc.LoopbackAddr(t, "starting", "admin_addr")
}

// WaitReady waits until the service's /readyz answers 200.
func (s *Service) WaitReady(t testing.TB) {
	t.Helper()
	s.proc.WaitFor(t, s.Name+" ready", func() bool {
		resp, err := http.Get("http://" + s.Admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *Service) Kill(t testing.TB) {
	t.Helper()
	s.proc.Signal(t, syscall.SIGKILL)
	<-s.proc.Done()
}

// Term sends SIGTERM and waits for the process to exit; it returns the exit
// code and the time from the signal to the exit.
func (s *Service) Term(t testing.TB) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	s.proc.Signal(t, syscall.SIGTERM)
	code := s.proc.Wait(t)
	return code, time.Since(start)
}

// Process is the running (or last) process.
func (s *Service) Process() *testenv.Process { return s.proc }

// Metrics reads the service's /metrics as text.
func (s *Service) Metrics(t testing.TB) string {
	t.Helper()
	code, body := testenv.HTTPGet(t, "http://"+s.Admin+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("%s /metrics: %d", s.Name, code)
	}
	return body
}

// Output is what every process of the service wrote, oldest first.
func (s *Service) Output() string {
	var b strings.Builder
	for i, o := range s.past {
		fmt.Fprintf(&b, "--- %s process %d\n%s", s.Name, i+1, o)
	}
	if s.proc != nil {
		fmt.Fprintf(&b, "--- %s process %d\n%s", s.Name, len(s.past)+1, s.proc.Output())
	}
	return b.String()
}

// Run runs a binary to its end (a one-shot command such as `completer
// migrate`) and fails the test unless it exits 0.
func Run(t testing.TB, path string, args []string, env map[string]string, w io.Writer) {
	t.Helper()
	p := testenv.StartBinary(t, path, args, env)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("%s %v: exit %d\n%s", filepath.Base(path), args, code, p.Output())
	}
	if w != nil {
		_, _ = io.WriteString(w, p.Output())
	}
}

// MetricValue returns the value of the sample in a Prometheus text
// exposition whose name and labels start with series (for example
// `effects_handled_total{kind="echo",outcome="failed"}`), summed over every
// sample that matches; 0 when none does.
func MetricValue(text, series string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, series) {
			continue
		}
		rest := line[len(series):]
		switch {
		case strings.HasPrefix(rest, " "):
		case !strings.Contains(series, "{") && !strings.HasPrefix(rest, "{"):
			continue // another metric whose name starts with series
		default:
			// series ended before or inside the labels: skip to their end.
			i := strings.Index(rest, "}")
			if i < 0 {
				continue
			}
			rest = rest[i+1:]
		}
		var v float64
		if _, err := fmt.Sscan(strings.TrimSpace(rest), &v); err == nil {
			sum += v
		}
	}
	return sum
}
