package service_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/effects-run/effects/internal/service"
	"github.com/effects-run/effects/internal/testenv"
)

// The process tests run this test binary as a service: with
// EFFECTS_SERVICE_TEST_SCENARIO set, TestMain calls service.Main with the run
// function of that name instead of running the tests.
const (
	envScenario    = "EFFECTS_SERVICE_TEST_SCENARIO"
	envDefaultAddr = "EFFECTS_SERVICE_TEST_DEFAULT_ADDR"
	serviceName    = "svctest"
)

func TestMain(m *testing.M) {
	if name := os.Getenv(envScenario); name != "" {
		run, ok := scenarios[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown scenario %q\n", name)
			os.Exit(100)
		}
		service.Main(serviceName, os.Getenv(envDefaultAddr), func(ctx context.Context, d service.Deps) error {
			fmt.Println("run called")
			return run(ctx, d)
		})
		os.Exit(101) // service.Main does not return
	}
	goleak.VerifyTestMain(m)
}

// scenarios are the run functions a child process can be started with. They
// report on stdout; service.Main logs on stderr.
var scenarios = map[string]func(ctx context.Context, d service.Deps) error{
	// Runs until stopped, then reports the context's cause and returns nil.
	"graceful": func(ctx context.Context, d service.Deps) error {
		d.Logger.Debug("a debug line")
		d.Logger.Warn("a warn line")
		fmt.Println("running")
		<-ctx.Done()
		cause := context.Cause(ctx)
		fmt.Printf("cause=%q is_stop=%t\n", cause, errors.Is(cause, service.ErrStop))
		return nil
	},
	// Returns the cause of the stop, wrapped, as work interrupted by a
	// shutdown does: that is not a failure.
	"return-cause": func(ctx context.Context, _ service.Deps) error {
		fmt.Println("running")
		<-ctx.Done()
		return fmt.Errorf("work interrupted: %w", context.Cause(ctx))
	},
	"config-error": func(context.Context, service.Deps) error {
		return fmt.Errorf("reading the settings: %w",
			&service.ConfigError{Err: errors.New(`EFFECTS_TEST_SETTING="x": want a number`)})
	},
	"error": func(context.Context, service.Deps) error {
		return errors.New("the dependency went away")
	},
	// Registers a metric, then adds a readiness check per line on stdin:
	// "ok" one that passes, "fail" one that fails. Runs until stopped.
	"admin": func(ctx context.Context, d service.Deps) error {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: "svctest_runs_total", Help: "Runs."})
		d.Registry.MustRegister(c)
		c.Inc()
		go func() {
			sc := bufio.NewScanner(os.Stdin)
			for sc.Scan() {
				switch sc.Text() {
				case "ok":
					d.Checks.Add("fine", func(context.Context) error { return nil })
				case "fail":
					d.Checks.Add("broken", func(context.Context) error { return errors.New("broken dependency") })
				}
				fmt.Println("added " + sc.Text())
			}
		}()
		fmt.Println("running")
		<-ctx.Done()
		return nil
	},
}

func TestNewLogger(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		level   string
		enabled slog.Level // the lowest level logged
	}{
		{"debug", slog.LevelDebug}, {"DEBUG", slog.LevelDebug},
		{"info", slog.LevelInfo}, {"Info", slog.LevelInfo},
		{"warn", slog.LevelWarn}, {"WARN", slog.LevelWarn},
		{"error", slog.LevelError}, {"eRRoR", slog.LevelError},
	} {
		logger, err := service.NewLogger(tc.level)
		if err != nil {
			t.Errorf("NewLogger(%q): %v", tc.level, err)
			continue
		}
		if !logger.Enabled(ctx, tc.enabled) || logger.Enabled(ctx, tc.enabled-1) {
			t.Errorf("NewLogger(%q) does not log from %s on", tc.level, tc.enabled)
		}
	}
	for _, level := range []string{"", "verbose", "warning", "trace", "fatal", "0", " info"} {
		logger, err := service.NewLogger(level)
		if err == nil || logger != nil {
			t.Errorf("NewLogger(%q) = %v, %v; want an error", level, logger, err)
			continue
		}
		if !strings.Contains(err.Error(), "EFFECTS_LOG_LEVEL") || !strings.Contains(err.Error(), fmt.Sprintf("%q", level)) {
			t.Errorf("NewLogger(%q): the error %q does not name EFFECTS_LOG_LEVEL and the value", level, err)
		}
	}
}

func TestConfigError(t *testing.T) {
	t.Parallel()
	inner := errors.New(`EFFECTS_X="y": want z`)
	var err error = fmt.Errorf("setup: %w", &service.ConfigError{Err: inner})
	if !errors.Is(err, inner) {
		t.Error("ConfigError does not unwrap to its error")
	}
	if got, want := err.Error(), `setup: configuration: EFFECTS_X="y": want z`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestStopsGracefullyOnSignal(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			p := start(t, "graceful", map[string]string{"EFFECTS_ADMIN_ADDR": "127.0.0.1:0"})
			p.waitStdout(t, "running\n")
			p.Signal(t, sig)
			if code := p.Wait(t); code != 0 {
				t.Fatalf("exit %d after %s, want 0\n%s", code, sig, p)
			}
			if want := fmt.Sprintf("cause=%q is_stop=true\n", service.ErrStop); !strings.Contains(p.Stdout(), want) {
				t.Errorf("the context's cause is not ErrStop: want %q in stdout\n%s", want, p)
			}
			logs := p.logs(t)
			if l := find(logs, "stopping"); l == nil || l["signal"] != sig.String() {
				t.Errorf("no \"stopping\" line naming the signal %q:\n%s", sig, p)
			}
			if find(logs, "stopped") == nil {
				t.Errorf("no \"stopped\" line:\n%s", p)
			}
			if find(logs, "a debug line") != nil || find(logs, "a warn line") == nil {
				t.Errorf("the default level is not info:\n%s", p)
			}
		})
	}
}

func TestShutdownCauseReturnedIsNotAFailure(t *testing.T) {
	t.Parallel()
	p := start(t, "return-cause", map[string]string{"EFFECTS_ADMIN_ADDR": "127.0.0.1:0"})
	p.waitStdout(t, "running\n")
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d, want 0: a run that returns ErrStop stopped gracefully\n%s", code, p)
	}
	logs := p.logs(t)
	if find(logs, "stopped") == nil || find(logs, "stopped with an error") != nil {
		t.Errorf("want \"stopped\" and no error:\n%s", p)
	}
}

func TestExitCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		scenario string
		env      map[string]string
		code     int
		msg      string // a log line's msg
		text     string // in that line's error, or in stderr when msg is ""
		runs     bool   // the run function is called
	}{
		{name: "config error", scenario: "config-error", code: 2, msg: "configuration",
			text: `EFFECTS_TEST_SETTING="x": want a number`, runs: true},
		{name: "run error", scenario: "error", code: 1, msg: "stopped with an error",
			text: "the dependency went away", runs: true},
		{name: "bad log level", scenario: "graceful", env: map[string]string{"EFFECTS_LOG_LEVEL": "verbose"},
			code: 2, text: `EFFECTS_LOG_LEVEL="verbose"`},
		{name: "bad admin address", scenario: "graceful", env: map[string]string{"EFFECTS_ADMIN_ADDR": "127.0.0.1:notaport"},
			code: 1, msg: "admin listener", text: "notaport"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"EFFECTS_ADMIN_ADDR": "127.0.0.1:0"}
			for k, v := range tc.env {
				env[k] = v
			}
			p := start(t, tc.scenario, env)
			if code := p.Wait(t); code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", code, tc.code, p)
			}
			if ran := strings.Contains(p.Stdout(), "run called"); ran != tc.runs {
				t.Errorf("run called: %t, want %t\n%s", ran, tc.runs, p)
			}
			if tc.msg == "" {
				if !strings.Contains(p.Stderr(), tc.text) {
					t.Errorf("stderr lacks %q\n%s", tc.text, p)
				}
				return
			}
			logs := p.logs(t)
			l := find(logs, tc.msg)
			if l == nil || !strings.Contains(fmt.Sprint(l["error"]), tc.text) || l["level"] != "ERROR" {
				t.Errorf("no ERROR line %q with %q in its error\n%s", tc.msg, tc.text, p)
			}
			if find(logs, "stopped") != nil {
				t.Errorf("a failed run logged \"stopped\"\n%s", p)
			}
		})
	}
}

func TestAdminAddrInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := start(t, "graceful", map[string]string{"EFFECTS_ADMIN_ADDR": ln.Addr().String()})
	if code := p.Wait(t); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, p)
	}
	if l := find(p.logs(t), "admin listener"); l == nil || l["addr"] != ln.Addr().String() {
		t.Errorf("no \"admin listener\" line naming %s\n%s", ln.Addr(), p)
	}
	if strings.Contains(p.Stdout(), "run called") {
		t.Errorf("run was called without an admin server\n%s", p)
	}
}

func TestLogLevelFromEnv(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		level        string
		debug, start bool // "a debug line" and "starting" are logged
	}{
		{"DEBUG", true, true},
		{"warn", false, false},
	} {
		t.Run(tc.level, func(t *testing.T) {
			t.Parallel()
			p := start(t, "graceful", map[string]string{"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_LOG_LEVEL": tc.level})
			p.waitStdout(t, "running\n")
			p.Signal(t, syscall.SIGTERM)
			if code := p.Wait(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, p)
			}
			logs := p.logs(t)
			if got := find(logs, "a debug line") != nil; got != tc.debug {
				t.Errorf("debug line logged: %t, want %t\n%s", got, tc.debug, p)
			}
			if got := find(logs, "starting") != nil; got != tc.start {
				t.Errorf("info line logged: %t, want %t\n%s", got, tc.start, p)
			}
			if find(logs, "a warn line") == nil {
				t.Errorf("warn line not logged\n%s", p)
			}
		})
	}
}

// TestAdminAddr checks which address the admin endpoints are served on:
// EFFECTS_ADMIN_ADDR, or the service's default when it is unset or empty.
func TestAdminAddr(t *testing.T) {
	t.Parallel()
	free := freeAddr(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string // the address, or a prefix of it ending in ':'
	}{
		// A default that cannot be listened on: were it used, Main would exit 1.
		{"set", map[string]string{"EFFECTS_ADMIN_ADDR": free, envDefaultAddr: "127.0.0.1:notaport"}, free},
		{"unset", map[string]string{envDefaultAddr: "127.0.0.1:0"}, "127.0.0.1:"},
		{"empty", map[string]string{"EFFECTS_ADMIN_ADDR": "", envDefaultAddr: "127.0.0.1:0"}, "127.0.0.1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, "graceful", tc.env)
			addr := p.LogAttr(t, "starting", "admin_addr")
			if addr != tc.want && (!strings.HasSuffix(tc.want, ":") || !strings.HasPrefix(addr, tc.want)) {
				t.Errorf("admin_addr %q, want %q", addr, tc.want)
			}
			if code, body := testenv.HTTPGet(t, "http://"+addr+"/healthz"); code != http.StatusOK {
				t.Errorf("/healthz on %s: %d %s", addr, code, body)
			}
			p.Signal(t, syscall.SIGTERM)
			if code := p.Wait(t); code != 0 {
				t.Fatalf("exit %d\n%s", code, p)
			}
		})
	}
}

func TestAdminEndpoints(t *testing.T) {
	t.Parallel()
	p := start(t, "admin", map[string]string{"EFFECTS_ADMIN_ADDR": "127.0.0.1:0"})
	base := "http://" + p.LogAttr(t, "starting", "admin_addr")
	p.waitStdout(t, "running\n")

	if code, body := testenv.HTTPGet(t, base+"/healthz"); code != http.StatusOK || !strings.Contains(body, `"ok"`) {
		t.Errorf("/healthz: %d %s, want 200", code, body)
	}
	if code, body := testenv.HTTPGet(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "starting") {
		t.Errorf("/readyz without checks: %d %s, want 503 \"starting\"", code, body)
	}
	code, body := testenv.HTTPGet(t, base+"/metrics")
	for _, want := range []string{"svctest_runs_total 1", "go_goroutines", "process_start_time_seconds"} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("/metrics: %d, lacks %q:\n%s", code, want, body)
		}
	}

	if code, _ := testenv.HTTPGet(t, base+"/debug/pprof/cmdline"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/cmdline without EFFECTS_PPROF: %d, want 404 (profiles are opt-in)", code)
	}

	p.send(t, "ok")
	if code, body := testenv.HTTPGet(t, base+"/readyz"); code != http.StatusOK || !strings.Contains(body, `"ready"`) {
		t.Errorf("/readyz with a passing check: %d %s, want 200", code, body)
	}
	p.send(t, "fail")
	if code, body := testenv.HTTPGet(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "broken dependency") {
		t.Errorf("/readyz with a failing check: %d %s, want 503 naming it", code, body)
	}
	if code, _ := testenv.HTTPGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with a failing check: %d, want 200 (alive)", code)
	}

	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, p)
	}
}

// TestPprofOptIn: EFFECTS_PPROF=1 adds Go's profiles to the admin address,
// next to the endpoints it always serves.
func TestPprofOptIn(t *testing.T) {
	t.Parallel()
	p := start(t, "admin", map[string]string{"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_PPROF": "1"})
	base := "http://" + p.LogAttr(t, "starting", "admin_addr")
	p.waitStdout(t, "running\n")

	if code, body := testenv.HTTPGet(t, base+"/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d, want 200 listing the profiles:\n%s", code, body)
	}
	if code, body := testenv.HTTPGet(t, base+"/debug/pprof/heap?debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Errorf("/debug/pprof/heap: %d, want 200 with a heap profile:\n%.200s", code, body)
	}
	if code, body := testenv.HTTPGet(t, base+"/metrics"); code != http.StatusOK || !strings.Contains(body, "svctest_runs_total 1") {
		t.Errorf("/metrics with EFFECTS_PPROF=1: %d, want the metrics still served", code)
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, p)
	}
}

// process is a child process running a scenario.
type process struct {
	*testenv.Process
}

// start runs scenario in a child process with env (and of the test's
// environment only PATH). It is killed when the test ends.
func start(t *testing.T, scenario string, env map[string]string) *process {
	t.Helper()
	return &process{testenv.StartProcessWithStdin(t, "", testenv.MergeEnv(env, map[string]string{envScenario: scenario}))}
}

// send writes a line to the scenario's stdin and waits for it to confirm.
func (p *process) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(p.Stdin(), line+"\n"); err != nil {
		t.Fatal(err)
	}
	p.waitStdout(t, "added "+line+"\n")
}

// waitStdout waits until the scenario printed s.
func (p *process) waitStdout(t *testing.T, s string) {
	t.Helper()
	p.WaitFor(t, fmt.Sprintf("stdout %q", s), func() bool { return strings.Contains(p.Stdout(), s) })
}

// logs parses stderr, which must be JSON lines of the service (every one
// with time, level, msg and service), and returns them.
func (p *process) logs(t *testing.T) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, raw := range strings.Split(strings.TrimSuffix(p.Stderr(), "\n"), "\n") {
		if raw == "" {
			continue
		}
		var l map[string]any
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Errorf("a log line is not JSON: %v\n%s", err, raw)
			continue
		}
		for _, key := range []string{"time", "level", "msg"} {
			if _, ok := l[key]; !ok {
				t.Errorf("a log line lacks %q: %s", key, raw)
			}
		}
		if l["service"] != serviceName {
			t.Errorf("a log line lacks service=%q: %s", serviceName, raw)
		}
		lines = append(lines, l)
	}
	return lines
}

// find returns the first log line with msg, or nil.
func find(lines []map[string]any, msg string) map[string]any {
	for _, l := range lines {
		if l["msg"] == msg {
			return l
		}
	}
	return nil
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestDurationsLoggedAsText(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: service.DurationsAsText}))
	l.Info("x", "retry_in", 1500*time.Millisecond, slog.Group("config", slog.Duration("timeout", 5*time.Second)))
	if !strings.Contains(buf.String(), `"retry_in":"1.5s"`) || !strings.Contains(buf.String(), `"timeout":"5s"`) {
		t.Errorf("durations not as text: %s", buf.String())
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, tc := range []struct {
		arg      string
		code     int
		want     string
		toStdout bool
	}{
		{"--help", 0, "usage: svc", true},
		{"-h", 0, "usage: svc", true},
		{"--version", 0, "svc ", true},
		{"--bogus", 2, "unknown argument", false},
	} {
		var stdout, stderr bytes.Buffer
		code, done := service.HandleArgsTo("svc", []string{tc.arg}, &stdout, &stderr)
		out := stderr.String()
		if tc.toStdout {
			out = stdout.String()
		}
		if !done || code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%s: done %v, code %d, stdout %q, stderr %q", tc.arg, done, code, stdout.String(), stderr.String())
		}
	}
	if _, done := service.HandleArgsTo("svc", nil, io.Discard, io.Discard); done {
		t.Error("no arguments: want the service to run")
	}
}
