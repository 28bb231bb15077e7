package check

import (
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/effects-run/effects/internal/testenv"
)

// promtoolCheckMetrics runs `promtool check metrics` (Prometheus's linter of
// the exposition format: names, units, _total suffixes, help texts) on a
// service's /metrics page.
func promtoolCheckMetrics(t *testing.T, service, url string) {
	t.Helper()
	path := promtoolPath(t)
	code, body := testenv.HTTPGet(t, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d", url, code)
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s: promtool check metrics on %s: %v\n%s", service, url, err, out)
	}
}
