package check

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/ingest"
)

// repoPath is a path in the repository.
func repoPath(parts ...string) string {
	return filepath.Join(append([]string{RepoRoot}, parts...)...)
}

func readRepoFile(t *testing.T, parts ...string) []byte {
	t.Helper()
	data, err := os.ReadFile(repoPath(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// defaultAdminPorts are the admin ports the binaries listen on when
// EFFECTS_ADMIN_ADDR is unset (cmd/*/main.go).
var defaultAdminPorts = map[string]int{"ingest": 9090, "dispatcher": 9091, "completer": 9092}

// portOf is the port of a listen address such as ":9090" or "0.0.0.0:9090".
func portOf(t *testing.T, where, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %q is not a listen address: %v", where, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: %q has no numeric port", where, addr)
	}
	return n
}

// exitMargin is the room an orchestrator's grace period must leave after
// EFFECTS_SHUTDOWN_TIMEOUT: the dispatcher's whole stop shares that one
// deadline, and then every service closes its admin server (up to 2s) and
// flushes its last spans (up to 5s, with tracing on) before it exits.
const exitMargin = 10 * time.Second

// shutdownTimeout is EFFECTS_SHUTDOWN_TIMEOUT in env, or the services'
// default.
func shutdownTimeout(t *testing.T, where string, env map[string]string) time.Duration {
	t.Helper()
	v := env["EFFECTS_SHUTDOWN_TIMEOUT"]
	if v == "" {
		return ingest.DefaultShutdownTimeout
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: EFFECTS_SHUTDOWN_TIMEOUT=%q: %v", where, v, err)
	}
	return d
}

// natsServerVersion is the nats-server version the main module's tests
// embed (go.mod), e.g. "2.15.3".
func natsServerVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*github\.com/nats-io/nats-server/v2 v(\d+\.\d+\.\d+)`).FindSubmatch(readRepoFile(t, "go.mod"))
	if m == nil {
		t.Fatal("go.mod does not require github.com/nats-io/nats-server/v2")
	}
	return string(m[1])
}

// pinnedTag matches an image tag that names one release, major.minor.patch
// with an optional variant; twoPartVersions are the images whose releases
// have two parts (PostgreSQL 15.14 is a release; postgres:15 moves).
var (
	pinnedTag       = regexp.MustCompile(`^v?\d+\.\d+\.\d+([.-][A-Za-z0-9.-]+)?$`)
	pinnedTwoPart   = regexp.MustCompile(`^\d+\.\d+([.-][A-Za-z0-9.-]+)?$`)
	twoPartVersions = map[string]bool{"postgres": true}
)

// imagePinned reports why an image reference is not pinned ("" when it is).
func imagePinned(ref string) string {
	if strings.Contains(ref, "@sha256:") {
		return ""
	}
	name, tag := ref, ""
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		name, tag = ref[:i], ref[i+1:]
	}
	switch {
	case tag == "":
		return name + " has no tag (it means latest)"
	case !pinnedTag.MatchString(tag) && !(twoPartVersions[name] && pinnedTwoPart.MatchString(tag)):
		return ref + ": tag " + tag + " does not name a release (want e.g. 1.2.3 or v1.2.3-alpine)"
	}
	return ""
}

// checkEnvNames checks that a container of bin is given only variables its
// code reads. pending are names another branch's code will read
// (see TestComposeTableSource); each is allowed only until the code reads it,
// when the entry becomes unused and may go.
func checkEnvNames(t *testing.T, where, bin string, names []string, pending map[string]string) {
	t.Helper()
	all := envNames(t)
	read, ok := all[bin]
	if !ok {
		bins := map[string]bool{}
		for b := range all {
			bins[b] = true
		}
		t.Errorf("%s: runs %q, which is not a binary under cmd/ (%v)", where, bin, Sorted(bins))
		return
	}
	for _, n := range names {
		if read[n] {
			continue
		}
		if why, ok := pending[n]; ok {
			t.Logf("%s: %s is not read by the code yet (%s); allowed until it is", where, n, why)
			continue
		}
		t.Errorf("%s: %s is set but cmd/%s never reads it (it reads %v)", where, n, bin, Sorted(read))
	}
}
