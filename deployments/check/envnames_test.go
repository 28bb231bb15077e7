package check

import (
	"os"
	"path/filepath"
	"slices"
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

// A reader in any package that looks the environment up is found, with its
// names given as literals, local constants or another package's constants;
// so is a parameter shaped like os.Getenv or os.LookupEnv, and env struct
// tags count too.
func TestNamesReadFindsReadersAnywhere(t *testing.T) {
	dir := t.TempDir()
	write := func(name, src string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("settings.go", `package settings

import "os"

const KeyFromOtherPackage = "OTHER_PACKAGE_NAME"

type Source struct{}

func (Source) Text(name string, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func Parse(s string) int { return len(s) }

func fromParam(getenv func(string) string, lookup func(key string) (value string, ok bool)) {
	_ = getenv("GETENV_PARAM_NAME")
	_, _ = lookup("LOOKUP_PARAM_NAME")
}
`)
	write("app.go", `package settings

const local = "LOCAL_CONST_NAME"

type Config struct {
	Tagged string `+"`env:\"TAGGED_NAME,required\"`"+`
}

func read(s Source) {
	_ = s.Text("LITERAL_NAME", "")
	_ = s.Text(local, "")
	_ = s.Text(KeyFromOtherPackage, "")
	_ = s.Text("not an env name", "")
	_ = Parse("PARSED_NAME")
}
`)
	pkgs := map[string]goPackage{"example/settings": {ImportPath: "example/settings", Dir: dir, GoFiles: []string{"settings.go", "app.go"}}}
	got, err := namesRead(pkgs)
	if err != nil {
		t.Fatal(err)
	}
	// Parse's first parameter is a string in a reader package too, so
	// PARSED_NAME counts: a name the code passes to such a function is
	// allowed, erring towards allowing.
	want := []string{"GETENV_PARAM_NAME", "LITERAL_NAME", "LOCAL_CONST_NAME", "LOOKUP_PARAM_NAME", "OTHER_PACKAGE_NAME", "PARSED_NAME", "TAGGED_NAME"}
	if g := Sorted(got); !slices.Equal(g, want) {
		t.Errorf("got %v, want %v", g, want)
	}

	// A package that does not look the environment up has no readers.
	write("settings.go", `package settings

const KeyFromOtherPackage = "OTHER_PACKAGE_NAME"

type Source struct{}

func (Source) Text(name string, def string) string { return def }

func Parse(s string) int { return len(s) }
`)
	got, err = namesRead(pkgs)
	if err != nil {
		t.Fatal(err)
	}
	if g := Sorted(got); !slices.Equal(g, []string{"TAGGED_NAME"}) {
		t.Errorf("without a lookup: got %v, want only the tag", g)
	}
}
