package check

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// notSettings is what the code reads that is no setting of the product, so
// has no row in the settings tables. Each entry says why. Keep it short: a
// variable an operator or user may set belongs in the docs instead.
var notSettings = map[string]string{
	// The system's, handed on to PostgreSQL's tools (internal/pgcluster:
	// effects dev's private server).
	"PATH": "system",
	// The tests' own (internal/testenv; README "Test it" names it).
	"EFFECTS_TEST_DATABASE_URL": "test",
	// The benchmarks' NATS (internal/testenv.StartBenchNATS).
	"EFFECTS_BENCH_NATS_URL":    "test",
	"EFFECTS_BENCH_NATS_SERVER": "test",
	// The fault suite's (internal/faulttest; `make faults` sets the first).
	"EFFECTS_FAULTS_RESULTS": "test",
	"FAULTS_RACE":            "test",
}

// Every environment variable the code reads has a row in a settings table
// of the README or of a page under docs/, so that no setting is lost when
// the reference moves between pages.
func TestEverySettingIsDocumented(t *testing.T) {
	missing, err := UndocumentedSettings(RepoRoot, notSettings)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range missing {
		t.Errorf("%s is read by the code but has no row (| `%s` | default | meaning |) in a table of README.md or docs/: add one where its siblings are", name, name)
	}
	// A test-only variable is read by no binary: else it is a setting and
	// must be documented, not listed above.
	for bin, names := range envNames(t) {
		for name, why := range notSettings {
			if why == "test" && names[name] {
				t.Errorf("%s is listed as test-only but cmd/%s reads it: document it instead", name, bin)
			}
		}
	}
}

// The check on a tree of its own: a variable read but only mentioned in
// prose fails it; a row in a table of any page under docs/ passes it; an
// exempt name passes, and an exempt name nothing reads is an error.
func TestUndocumentedSettingsFindsTheMissingRow(t *testing.T) {
	root := t.TempDir()
	write := func(rel, text string) {
		t.Helper()
		path := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/fake\n\ngo 1.22\n")
	write("cmd/svc/main.go", `package main

import (
	"os"

	"example.com/fake/internal/conf"
)

func main() {
	_ = os.Getenv("FAKE_IN_README")
	_ = os.Getenv("FAKE_EXEMPT")
	_ = conf.Read()
}
`)
	write("internal/conf/conf.go", `package conf

import "os"

const nameInDocs = "FAKE_IN_DOCS_PAGE"

func Read() string { return os.Getenv(nameInDocs) + os.Getenv("FAKE_IN_PROSE_ONLY") }
`)
	write("README.md", "# fake\n\n| variable | default | meaning |\n|---|---|---|\n"+
		"| `FAKE_IN_README` | `1` | a documented setting |\n"+
		"| `OTHER` | `FAKE_IN_PROSE_ONLY` | named in a row, but not in its first cell |\n\n"+
		"Set `FAKE_IN_PROSE_ONLY` to change things.\n")
	write("docs/ops/configuration.md", "| variable | meaning |\n|---|---|\n| `FAKE_IN_DOCS_PAGE`, `FAKE_ALSO` | in a page under docs/ |\n")

	exempt := map[string]string{"FAKE_EXEMPT": "test"}
	got, err := UndocumentedSettings(root, exempt)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"FAKE_IN_PROSE_ONLY"}; !slices.Equal(got, want) {
		t.Errorf("undocumented: got %v, want %v", got, want)
	}

	write("docs/ops/more.md", "| `FAKE_IN_PROSE_ONLY` | now with a row |\n")
	if got, err := UndocumentedSettings(root, exempt); err != nil || len(got) != 0 {
		t.Errorf("with every row: got %v, %v; want none", got, err)
	}

	exempt["FAKE_NOT_READ"] = "test"
	if _, err := UndocumentedSettings(root, exempt); err == nil || !strings.Contains(err.Error(), "FAKE_NOT_READ") {
		t.Errorf("an exempt name nothing reads: got %v, want an error naming it", err)
	}
}
