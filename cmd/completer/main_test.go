package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/effects-run/effects/internal/controlkv"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// The tests run this test binary as the command: with
// EFFECTS_COMPLETER_TEST_MAIN set it runs main() instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv("EFFECTS_COMPLETER_TEST_MAIN") == "1" {
		os.Args = append([]string{"completer"}, strings.Fields(os.Getenv("EFFECTS_COMPLETER_TEST_ARGS"))...)
		main()
		os.Exit(0) // main returned: the service ran and stopped
	}
	goleak.VerifyTestMain(m)
}

// command returns the completer with args and env (and nothing else of the
// test's environment but PATH).
func command(t *testing.T, ctx context.Context, env map[string]string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(testenv.ChildEnv("EFFECTS_COMPLETER_TEST_MAIN", env), "EFFECTS_COMPLETER_TEST_ARGS="+strings.Join(args, " "))
	return cmd
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// withPassword puts a password into a database URL. The test database
// trusts local connections, so it is not checked, but it must never be
// printed.
func withPassword(url, pw string) string {
	return strings.Replace(url, "postgres://postgres@", "postgres://postgres:"+pw+"@", 1)
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	n := testenv.StartNATS(t)
	env := map[string]string{"DATABASE_URL": withPassword(pg.URL, "pw-never-printed"), "EFFECTS_TABLE": "effects", "NATS_URL": n.URL}
	for i := 0; i < 2; i++ {
		out, err := command(t, testCtx(t), env, "migrate").CombinedOutput()
		if code := exitCode(err); code != 0 {
			t.Fatalf("run %d: exit %d\n%s", i+1, code, out)
		}
		if bytes.Contains(out, []byte("pw-never-printed")) {
			t.Fatalf("the password was printed:\n%s", out)
		}
	}
	if err := schema.Check(testCtx(t), pg.Pool, "effects"); err != nil {
		t.Fatal(err)
	}
	// The operator controls' bucket, filled from the table, for the
	// dispatchers to read at once.
	_, js := n.Connect(t)
	kv, err := js.KeyValue(testCtx(t), controlkv.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(testCtx(t), controlkv.SyncedKey); err != nil {
		t.Fatalf("key %s: %v", controlkv.SyncedKey, err)
	}
}

func TestMigrateCommandFails(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		code int
		want string
	}{
		{map[string]string{}, 2, "DATABASE_URL is not set"},
		{map[string]string{"DATABASE_URL": "postgres://u:pw-never-printed@127.0.0.1:1/db", "EFFECTS_TABLE": "bad name"}, 2, "EFFECTS_TABLE"},
		{map[string]string{"DATABASE_URL": "postgres://u:pw-never-printed@127.0.0.1:1/db?connect_timeout=5"}, 1, "connect to PostgreSQL"},
		{map[string]string{"DATABASE_URL": "postgres://u:pw-never-printed@127.0.0.1:bad/db"}, 1, "DATABASE_URL"},
	} {
		out, err := command(t, testCtx(t), tc.env, "migrate").CombinedOutput()
		if code := exitCode(err); code != tc.code || !bytes.Contains(out, []byte(tc.want)) {
			t.Errorf("%v: exit %d, want %d with %q:\n%s", tc.env, code, tc.code, tc.want, out)
		}
		if bytes.Contains(out, []byte("pw-never-printed")) {
			t.Errorf("%v: the password was printed:\n%s", tc.env, out)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	cmd := command(t, testCtx(t), nil, "frobnicate")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if code := exitCode(err); code != 2 || !strings.Contains(stderr.String(), "usage:") || !strings.Contains(stderr.String(), "frobnicate") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
}

func TestServiceRefusesToStartWithoutTable(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	n := testenv.StartNATS(t)
	out, err := command(t, testCtx(t), map[string]string{
		"DATABASE_URL": pg.URL, "NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0",
	}).CombinedOutput()
	if code := exitCode(err); code != 1 || !bytes.Contains(out, []byte("run `completer migrate`")) {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

func TestServiceRunsAndStopsOnSIGTERM(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	n := testenv.StartNATS(t)
	env := map[string]string{
		"DATABASE_URL": withPassword(pg.URL, "pw-never-printed"), "NATS_URL": n.URL,
		"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_LOG_LEVEL": "debug",
	}
	if out, err := command(t, testCtx(t), env, "migrate").CombinedOutput(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}

	cmd := command(t, testCtx(t), env)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	addr := make(chan string, 1)
	running := make(chan struct{})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.Write(sc.Bytes())
			logs.WriteByte('\n')
			var line struct {
				Msg       string `json:"msg"`
				AdminAddr string `json:"admin_addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil {
				switch line.Msg {
				case "starting":
					addr <- line.AdminAddr
				case "completer running":
					close(running)
				}
			}
		}
	}()
	var admin string
	select {
	case admin = <-addr:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("no starting line")
	}

	// (/readyz answers before the service has registered its checks:
	// service.Main serves it from the start.)
	select {
	case <-running:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("no running line")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get(t, "http://"+admin+"/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("not ready in 30s: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body := get(t, "http://"+admin+"/metrics"); code != http.StatusOK || !strings.Contains(body, "effects_completer_write_errors_total") {
		t.Errorf("/metrics: %d, lacks the completer's metrics:\n%s", code, body)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-copied
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
	if strings.Contains(logs.String(), "pw-never-printed") {
		t.Fatalf("the password was logged:\n%s", logs.String())
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, fmt.Sprint(string(b))
}

// TestStreamsAreOwnedByMigrate: the streams' configuration changes only
// through `completer migrate`. A service started with other stream settings
// leaves the existing streams as they are (a stray EFFECTS_STREAM_MAX_AGE on
// one service must not change retention for everyone, nor flip it back and
// forth during a rolling deploy).
func TestStreamsAreOwnedByMigrate(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	base := map[string]string{"DATABASE_URL": pg.URL, "NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0"}
	streamConfig := func() (time.Duration, time.Duration) {
		t.Helper()
		// The controls' bucket keeps cancels as long as the streams keep
		// effects.
		if s, err := js.Stream(testCtx(t), controlkv.Stream); err != nil {
			t.Fatal(err)
		} else if age := s.CachedInfo().Config.MaxAge; age != effectsMaxAge(t, js) {
			t.Errorf("bucket %s max age %s, the effects stream's %s", controlkv.Bucket, age, effectsMaxAge(t, js))
		}
		for _, name := range []string{effects.EffectsStream, effects.CompletedStream} {
			s, err := js.Stream(testCtx(t), name)
			if err != nil {
				t.Fatal(err)
			}
			if name == effects.CompletedStream {
				c := s.CachedInfo().Config
				return c.MaxAge, c.Duplicates
			}
		}
		return 0, 0
	}

	if out, err := command(t, testCtx(t), testenv.MergeEnv(base, map[string]string{"EFFECTS_STREAM_MAX_AGE": "1h"}), "migrate").CombinedOutput(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	if age, dup := streamConfig(); age != time.Hour || dup != 2*time.Minute {
		t.Fatalf("after migrate: max age %s, duplicates %s", age, dup)
	}

	p := testenv.StartProcess(t, "EFFECTS_COMPLETER_TEST_MAIN", testenv.MergeEnv(base, map[string]string{
		"EFFECTS_STREAM_MAX_AGE": "2h", "EFFECTS_DUPLICATE_WINDOW": "1m",
	}))
	p.WaitForLog(t, "completer running")
	if age, dup := streamConfig(); age != time.Hour || dup != 2*time.Minute {
		t.Errorf("a service changed the streams: max age %s, duplicates %s", age, dup)
	}
	// It says so, and how to apply them.
	if l := p.FindLog(t, "completer", "the streams differ from this service's EFFECTS_STREAM_MAX_AGE, EFFECTS_DUPLICATE_WINDOW or "+
		"EFFECTS_STREAM_REPLICAS; services never change a stream: run `completer migrate streams` to apply them"); l == nil ||
		!strings.Contains(fmt.Sprint(l["differences"]), "EFFECTS max age 1h0m0s, here 2h0m0s") {
		t.Errorf("no warning naming the difference\n%s", p.Output())
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, p.Output())
	}

	out, err := command(t, testCtx(t), testenv.MergeEnv(base, map[string]string{"EFFECTS_STREAM_MAX_AGE": "2h"}), "migrate", "streams").CombinedOutput()
	if err != nil {
		t.Fatalf("migrate streams: %v\n%s", err, out)
	}
	if age, dup := streamConfig(); age != 2*time.Hour || dup != 2*time.Minute {
		t.Errorf("after migrate streams: max age %s, duplicates %s", age, dup)
	}
}

func effectsMaxAge(t *testing.T, js jetstream.JetStream) time.Duration {
	t.Helper()
	s, err := js.Stream(testCtx(t), effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config.MaxAge
}

// TestSharedSettingsRefuseZero: an explicit 0 in a shared setting is an
// error naming the variable, the same in the service and in migrate, never a
// silent default.
func TestSharedSettingsRefuseZero(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"EFFECTS_SHUTDOWN_TIMEOUT", "EFFECTS_STREAM_MAX_AGE", "EFFECTS_DUPLICATE_WINDOW", "EFFECTS_STREAM_REPLICAS"} {
		env := map[string]string{"DATABASE_URL": "postgres://u@127.0.0.1:1/db", "NATS_URL": "nats://127.0.0.1:1",
			"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", name: "0"}
		for _, args := range [][]string{nil, {"migrate"}} {
			out, err := command(t, testCtx(t), env, args...).CombinedOutput()
			if code := exitCode(err); code != 2 || !bytes.Contains(out, []byte(name+`=\"0\"`)) {
				t.Errorf("%s=0, args %q: exit %d, want 2 naming it:\n%s", name, args, code, out)
			}
		}
	}
}
