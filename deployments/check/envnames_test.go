package check

import (
	"sync"
	"testing"
)

var (
	envOnce sync.Once
	envRead map[string]map[string]bool
	envErr  error
)

// envNames is EnvNames of the repository, computed once per test run.
func envNames(t *testing.T) map[string]map[string]bool {
	t.Helper()
	envOnce.Do(func() { envRead, envErr = EnvNames(RepoRoot) })
	if envErr != nil {
		t.Fatal(envErr)
	}
	return envRead
}

func TestEnvNamesAreReadFromTheCode(t *testing.T) {
	got := envNames(t)
	for bin, want := range map[string][]string{
		// service.Main, natsconn and each service's config.go; the
		// dispatcher's built-in handlers name theirs by constants.
		"ingest":     {"NATS_URL", "EFFECTS_ADMIN_ADDR", "EFFECTS_LOG_LEVEL", "EFFECTS_WEBHOOK_SECRET", "EFFECTS_HTTP_ADDR", "EFFECTS_STREAM_REPLICAS"},
		"dispatcher": {"NATS_URL", "EFFECTS_ADMIN_ADDR", "EFFECTS_CONCURRENCY", "EFFECTS_HTTP_ALLOW", "EFFECTS_HTTP_MAX_RESPONSE_BYTES", "EFFECTS_SHUTDOWN_TIMEOUT"},
		"completer":  {"NATS_URL", "DATABASE_URL", "EFFECTS_TABLE", "EFFECTS_COMPLETER_BATCH_SIZE"},
	} {
		for _, name := range want {
			if !got[bin][name] {
				t.Errorf("%s: %s not found among the names its code reads: %v", bin, name, Sorted(got[bin]))
			}
		}
	}
	// Names are per binary: the dispatcher has no database, and no
	// binary reads the tests' own variables.
	for _, name := range []string{"DATABASE_URL", "EFFECTS_WEBHOOK_SECRET", "EFFECTS_COMPLETER_BATCH_SIZE"} {
		if got["dispatcher"][name] {
			t.Errorf("dispatcher: %s counted as read", name)
		}
	}
	for bin, names := range got {
		if names["EFFECTS_TEST_DATABASE_URL"] {
			t.Errorf("%s: EFFECTS_TEST_DATABASE_URL (internal/testenv) counted as read", bin)
		}
	}
}
