package check

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/testenv"
)

// synthesized are series Prometheus writes itself for every target.
var synthesized = map[string]bool{"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true}

// exportedNames is the series names of a /metrics page: each family's
// name, and for histograms and summaries their _bucket, _sum and _count.
func exportedNames(t *testing.T, url string) map[string]bool {
	t.Helper()
	code, body := testenv.HTTPGet(t, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d", url, code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	out := map[string]bool{}
	for name, f := range fams {
		out[name] = true
		switch f.GetType().String() {
		case "HISTOGRAM", "GAUGE_HISTOGRAM":
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		case "SUMMARY":
			out[name+"_sum"], out[name+"_count"] = true, true
		}
	}
	return out
}

// The binaries the Dockerfile builds, run as processes against a real
// PostgreSQL and NATS, export every metric the alert rules and the
// dashboard query, once an effect went through them, and their /metrics
// pass `promtool check metrics`. They also start from
// the environment the deployments give them and stop cleanly on SIGTERM.
func TestRulesAndDashboardQueryExportedMetrics(t *testing.T) {
	queried := queriedMetrics(t)
	dir := builtBinaries(t)
	bin := func(name string) string { return filepath.Join(dir, name) }

	nats := testenv.StartNATS(t)
	pg := testenv.StartPostgres(t)
	const secret = "metrics-test-secret"
	common := map[string]string{"NATS_URL": nats.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_LOG_LEVEL": "info"}

	migrate := testenv.StartBinary(t, bin("completer"), []string{"migrate"}, map[string]string{"DATABASE_URL": pg.URL, "NATS_URL": nats.URL})
	if code := migrate.Wait(t); code != 0 {
		t.Fatalf("completer migrate: exit %d\n%s", code, migrate.Output())
	}
	procs := map[string]*testenv.Process{
		"ingest": testenv.StartBinary(t, bin("ingest"), nil, testenv.MergeEnv(common, map[string]string{
			"EFFECTS_HTTP_ADDR": "127.0.0.1:0", "EFFECTS_WEBHOOK_SECRET": secret,
		})),
		// A rate limit on the kind, so that its limiter's series exist
		// (EffectsRateLimitStateUnreadable queries them).
		"dispatcher": testenv.StartBinary(t, bin("dispatcher"), nil, testenv.MergeEnv(common, map[string]string{"EFFECTS_KIND_RATE": "echo=1000/s"})),
		"completer":  testenv.StartBinary(t, bin("completer"), nil, testenv.MergeEnv(common, map[string]string{"DATABASE_URL": pg.URL})),
	}
	admin := map[string]string{}
	for name, p := range procs {
		admin[name] = "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
		p.WaitFor(t, name+" ready", func() bool {
			resp, err := http.Get(admin[name] + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	webhook := "http://" + procs["ingest"].LoopbackAddr(t, "ingest listening", "addr") + ingest.EventsPath

	// One effect through the pipeline, as Hasura delivers it.
	ctx := context.Background()
	var id string
	var row []byte
	if err := pg.Pool.QueryRow(ctx, `INSERT INTO effects (kind, payload) VALUES ('echo', '{"n": 1}')
		RETURNING id::text, row_to_json(effects)::text`).Scan(&id, &row); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`{"id": "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "created_at": %q,
		"trigger": {"name": "effects_dispatch"}, "table": {"schema": "public", "name": "effects"},
		"event": {"op": "INSERT", "session_variables": null, "data": {"old": null, "new": %s}},
		"delivery_info": {"current_retry": 0, "max_retries": 10}}`, time.Now().UTC().Format("2006-01-02T15:04:05.999999"), row)
	req, _ := http.NewRequest(http.MethodPost, webhook, bytes.NewBufferString(body))
	req.Header.Set(ingest.SecretHeader, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("ingest answered %d", resp.StatusCode)
	}
	procs["completer"].WaitFor(t, "the effect written back", func() bool {
		var status string
		err := pg.Pool.QueryRow(ctx, `SELECT status FROM effects WHERE id = $1`, id).Scan(&status)
		return err == nil && status == "succeeded"
	})

	exported := map[string][]string{}
	for name, url := range admin {
		promtoolCheckMetrics(t, name, url+"/metrics")
		for m := range exportedNames(t, url+"/metrics") {
			exported[m] = append(exported[m], name)
		}
	}
	for m, where := range queried {
		if len(exported[m]) == 0 && !synthesized[m] {
			t.Errorf("%s is queried (%s) but no service exports it", m, strings.Join(where, "; "))
		}
	}

	// SIGTERM: every service stops cleanly, as a pod or compose container
	// is stopped.
	for name, p := range procs {
		p.Signal(t, syscall.SIGTERM)
		if code := p.Wait(t); code != 0 {
			t.Errorf("%s: exit %d after SIGTERM\n%s", name, code, p.Output())
		}
	}
}
