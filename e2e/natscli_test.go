package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/natsconn"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/schemas"
)

// NatsCLIEnv names the nats CLI binary the test runs. When it is not set the
// test uses bin/tools/nats (`make natscli` builds it there) or, failing that,
// builds the pinned version into the user's cache directory itself.
const NatsCLIEnv = "EFFECTS_NATS_CLI"

const natscliModule = "github.com/nats-io/natscli/nats"

var (
	natscliOnce sync.Once
	natscliPath string
	natscliErr  error
)

// natsCLI returns the path of the pinned nats CLI (e2e/testdata/natscli.version).
// It never skips: without the binary the test fails, since a missing tool
// in CI must not pass as a green run.
func natsCLI(t *testing.T) string {
	t.Helper()
	natscliOnce.Do(func() { natscliPath, natscliErr = findNatsCLI() })
	if natscliErr != nil {
		t.Fatalf("the nats CLI: %v", natscliErr)
	}
	return natscliPath
}

func findNatsCLI() (string, error) {
	v, err := os.ReadFile(filepath.Join("testdata", "natscli.version"))
	if err != nil {
		return "", err
	}
	version := strings.TrimSpace(string(v))
	if p := os.Getenv(NatsCLIEnv); p != "" {
		return p, checkNatsCLIVersion(p, version)
	}
	if p, err := filepath.Abs(filepath.Join("..", "bin", "tools", "nats")); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p, checkNatsCLIVersion(p, version)
		}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no %s, no bin/tools/nats and no cache directory to build it in: %w", NatsCLIEnv, err)
	}
	dir := filepath.Join(cache, "effects-tests", "natscli-"+version)
	p := filepath.Join(dir, "nats")
	if _, err := os.Stat(p); err != nil {
		// go install pkg@version resolves natscli's own module graph, apart
		// from this module's.
		cmd := exec.Command("go", "install", natscliModule+"@"+version)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go install %s@%s (or run make natscli, or set %s): %v\n%s", natscliModule, version, NatsCLIEnv, err, out)
		}
	}
	return p, checkNatsCLIVersion(p, version)
}

func checkNatsCLIVersion(path, want string) error {
	out, err := exec.Command(path, "--version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s --version: %v\n%s", path, err, out)
	}
	if got := strings.TrimSpace(string(out)); got != want {
		return fmt.Errorf("%s is version %s, the pinned version is %s (e2e/testdata/natscli.version)", path, got, want)
	}
	return nil
}

// runNats runs the nats CLI against the test's server, with a home of its
// own so that no saved context of the machine's user applies.
func runNats(t *testing.T, ctx context.Context, server string, args ...string) []byte {
	t.Helper()
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, natsCLI(t), append([]string{"--server", server}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+home, "NATS_CONTEXT=", "NATS_URL="+server)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nats %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// decodeAll decodes the concatenated JSON values the CLI prints (one per
// message with --raw).
func decodeAll[T any](t *testing.T, out []byte, v *schemas.Validator, check func(*schemas.Validator, []byte) error) []T {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(out))
	var all []T
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			return all
		} else if err != nil {
			t.Fatalf("the CLI's output is not a series of JSON messages: %v\n%s", err, out)
		}
		if err := check(v, raw); err != nil {
			t.Errorf("a message the CLI read: %v\n%s", err, raw)
		}
		var m T
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		all = append(all, m)
	}
}

// Another team adds its own durable consumer on the effect stream with the
// real nats CLI and reads the effects the dispatcher also handles, while the
// dispatcher holds them: the team's consumer sees every effect (and every
// completion, on a second consumer), the dispatcher still runs and completes
// every effect once, and neither consumer's acks take messages from the
// other.
func TestNatsCLIConsumerBesideDispatcher(t *testing.T) {
	cli := natsCLI(t) // fail early, before the pipeline starts
	t.Logf("nats CLI: %s", cli)

	var mu sync.Mutex
	runs := map[string]int{}
	reg := effects.NewRegistry()
	started := make(chan struct{}, 64)
	release := make(chan struct{})
	reg.Handle("audited", func(ctx context.Context, e effects.Effect) (any, error) {
		mu.Lock()
		runs[e.ID]++
		mu.Unlock()
		started <- struct{}{}
		// The dispatcher holds the effect (delivered, not acked) until the
		// team's consumer has read and acked every effect.
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return map[string]string{"seen": e.ID}, nil
	})
	p := startPipeline(t, options{
		registry: reg,
		dispatcher: dispatcher.Config{
			Concurrency: 4, MaxAttempts: 3, RetryBase: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond,
			HandlerTimeout: time.Minute, ShutdownTimeout: 2 * time.Second,
		},
	})
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The team's consumers, as its README step says: durable, pull,
	// explicit ack, filtered on the kinds it cares about, from the start.
	subject := effects.Subject("audited")
	runNats(t, ctx, p.natsURL, "consumer", "add", effects.EffectsStream, "audit-team",
		"--filter", subject, "--pull", "--ack", "explicit", "--deliver", "all", "--replay", "instant",
		"--max-deliver=-1", "--wait", "30s", "--defaults")
	runNats(t, ctx, p.natsURL, "consumer", "add", effects.CompletedStream, "audit-team-completions",
		"--filter", effects.CompletedSubject("audited"), "--pull", "--ack", "explicit", "--deliver", "all",
		"--replay", "instant", "--max-deliver=-1", "--wait", "30s", "--defaults")

	const n = 6
	ids := map[string]bool{}
	for i := 0; i < n; i++ {
		id, row := p.insert("audited", fmt.Sprintf(`{"n": %d}`, i))
		ids[id] = true
		_, body := p.event("INSERT", row)
		if r := p.post(body); r.Code != 200 || r.EffectID != id {
			t.Fatalf("reply %+v", r)
		}
	}
	// The team reads and acks every effect while the dispatcher's handler
	// holds them: what one consumer has in flight the other still gets.
	<-started
	effectsRead := decodeAll[effects.Effect](t,
		runNats(t, ctx, p.natsURL, "consumer", "next", effects.EffectsStream, "audit-team", "--count", fmt.Sprint(n), "--ack", "--raw"),
		v, (*schemas.Validator).Effect)
	// The team's acks took nothing from the dispatcher: it completes every
	// effect, each on its first attempt.
	close(release)
	for id := range ids {
		if got := p.settled(id); got.Status != "succeeded" || got.Attempts != 1 {
			t.Fatalf("%s: row %+v", id, got)
		}
	}
	completionsRead := decodeAll[effects.Completion](t,
		runNats(t, ctx, p.natsURL, "consumer", "next", effects.CompletedStream, "audit-team-completions", "--count", fmt.Sprint(n), "--ack", "--raw"),
		v, (*schemas.Validator).Completion)
	for what, got := range map[string][]string{"effects": idsOf(effectsRead, func(e effects.Effect) string { return e.ID }),
		"completions": idsOf(completionsRead, func(c effects.Completion) string { return c.EffectID })} {
		seen := map[string]int{}
		for _, id := range got {
			seen[id]++
		}
		if len(got) != n || len(seen) != n {
			t.Errorf("the CLI read %d %s (%d distinct), want %d: %v", len(got), what, len(seen), n, got)
		}
		for id := range ids {
			if seen[id] != 1 {
				t.Errorf("the CLI read the %s of %s %d times", what, id, seen[id])
			}
		}
	}

	// Each effect ran exactly once, neither consumer has anything pending
	// or redelivered, and the stream (limits retention) still holds every
	// effect for any other reader.
	mu.Lock()
	for id := range ids {
		if runs[id] != 1 {
			t.Errorf("the handler ran %s %d times", id, runs[id])
		}
	}
	mu.Unlock()
	nc, js, err := natsconn.Connect(p.natsURL, "e2e-natscli-check", logger(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for name, want := range map[string]uint64{dispatcher.ConsumerName("audited"): n, "audit-team": n} {
		// The dispatcher acks an effect after publishing its completion,
		// which may be after the completer wrote the row.
		var info *jetstream.ConsumerInfo
		p.waitFor(20*time.Second, name+" to settle its acks", func() bool {
			info = consumerInfo(ctx, t, js, effects.EffectsStream, name)
			return info.NumAckPending == 0
		})
		if info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 || info.Delivered.Consumer != want {
			t.Errorf("consumer %s: pending %d, ack pending %d, redelivered %d, delivered %d; want 0, 0, 0, %d",
				name, info.NumPending, info.NumAckPending, info.NumRedelivered, info.Delivered.Consumer, want)
		}
	}
	stream, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	st, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	if st.State.Subjects[subject] != n {
		t.Errorf("the stream holds %d messages on %s after both consumers acked, want %d", st.State.Subjects[subject], subject, n)
	}
}

func idsOf[T any](ms []T, id func(T) string) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, id(m))
	}
	return out
}

func consumerInfo(ctx context.Context, t *testing.T, js jetstream.JetStream, stream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(ctx, stream, name)
	if err != nil {
		t.Fatalf("consumer %s: %v", name, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}
