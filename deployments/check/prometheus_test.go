package check

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metricsql"
	"go.yaml.in/yaml/v3"
)

// promtoolPath finds promtool, Prometheus's own checker, or fails the test
// saying what to install.
func promtoolPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not on PATH; the deployment checks need it. Install Prometheus, which ships it " +
			"(Debian/Ubuntu: apt-get install prometheus; macOS: brew install prometheus; " +
			"elsewhere the release archive from https://prometheus.io/download/ holds promtool). .ci/run installs it.")
	}
	return path
}

// promtool runs promtool with args in deployments/prometheus.
func promtool(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(promtoolPath(t), args...)
	cmd.Dir = repoPath("deployments", "prometheus")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestPromtool(t *testing.T) {
	promtool(t, "check", "config", "prometheus.yml")
	promtool(t, "check", "rules", "rules/effects.yml")
	promtool(t, "test", "rules", "tests/effects_test.yml")
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string `yaml:"alert"`
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// ruleExprs is every expression of the repository's rule files, by alert.
func ruleExprs(t *testing.T) map[string]string {
	t.Helper()
	var rf ruleFile
	if err := yaml.Unmarshal(readRepoFile(t, "deployments", "prometheus", "rules", "effects.yml"), &rf); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			out["rule "+r.Alert+r.Record] = r.Expr
		}
	}
	if len(out) == 0 {
		t.Fatal("no rules in deployments/prometheus/rules/effects.yml")
	}
	return out
}

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Datasource json.RawMessage `json:"datasource"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Title      string `json:"title"`
	Type       string `json:"type"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type datasource struct {
	Name string `yaml:"name"`
	UID  string `yaml:"uid"`
	Type string `yaml:"type"`
	URL  string `yaml:"url"`
}

func grafanaDatasource(t *testing.T) datasource {
	t.Helper()
	var f struct {
		Datasources []datasource `yaml:"datasources"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, "deployments", "grafana", "provisioning", "datasources", "prometheus.yml"), &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Datasources) != 1 || f.Datasources[0].Type != "prometheus" || f.Datasources[0].UID == "" {
		t.Fatalf("want one prometheus data source with a uid, got %+v", f.Datasources)
	}
	return f.Datasources[0]
}

var labelValues = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)$`)

// dashboardExprs is every query of the dashboard (panel targets, and the
// metrics of label_values variables), checking on the way that each panel
// uses the provisioned data source.
func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readRepoFile(t, "deployments", "grafana", "dashboards", "effects.json"), &d); err != nil {
		t.Fatalf("effects.json: %v", err)
	}
	ds := grafanaDatasource(t)
	out := map[string]string{}
	var visit func(ps []panel)
	visit = func(ps []panel) {
		for _, p := range ps {
			visit(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != ds.UID {
				t.Errorf("panel %q: data source must be the provisioned one (uid %q)", p.Title, ds.UID)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for i, tg := range p.Targets {
				out[fmt.Sprintf("panel %q query %d", p.Title, i)] = tg.Expr
			}
		}
	}
	visit(d.Panels)
	for _, v := range d.Templating.List {
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(metric, label)", v.Name, v.Definition)
			continue
		}
		out["variable "+v.Name] = m[1]
	}
	return out
}

// grafanaVars stands in for Grafana's variables so a query parses as PromQL.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__range", "1h", "$__interval", "1m", "$kind", ".*")

// metricNames parses a PromQL expression and returns the metrics it selects.
func metricNames(expr string) ([]string, error) {
	e, err := metricsql.Parse(grafanaVars.Replace(expr))
	if err != nil {
		return nil, err
	}
	var names []string
	var missing error
	metricsql.VisitAll(e, func(x metricsql.Expr) {
		me, ok := x.(*metricsql.MetricExpr)
		if !ok {
			return
		}
		for _, group := range me.LabelFilterss {
			name := ""
			for _, f := range group {
				if f.Label == "__name__" && !f.IsRegexp && !f.IsNegative {
					name = f.Value
				}
			}
			if name == "" {
				missing = fmt.Errorf("a selector without a metric name: %s", me.AppendString(nil))
				continue
			}
			names = append(names, name)
		}
	})
	return names, missing
}

// queriedMetrics is every metric the rules and the dashboard query, with
// where each is queried.
func queriedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, exprs := range []map[string]string{ruleExprs(t), dashboardExprs(t)} {
		for where, expr := range exprs {
			names, err := metricNames(expr)
			if err != nil {
				t.Errorf("%s: %q: %v", where, expr, err)
			}
			for _, n := range names {
				out[n] = append(out[n], where)
			}
		}
	}
	return out
}

func TestDashboardQueriesParse(t *testing.T) {
	got := queriedMetrics(t)
	// What the dashboard must show per kind (the list).
	for _, m := range []string{"effects_handled_total", "effects_end_to_end_seconds_bucket", "effects_ingested_total", "effects_end_to_end_seconds_count"} {
		if len(got[m]) == 0 {
			t.Errorf("neither rules nor dashboard query %s", m)
		}
	}
}

func TestMetricNames(t *testing.T) {
	names, err := metricNames(`sum by (kind) (rate(a_total{kind=~"$kind"}[$__rate_interval])) / on (kind) b or up{job="x"}`)
	if err != nil || strings.Join(names, ",") != "a_total,b,up" {
		t.Errorf("got %v, %v", names, err)
	}
	if _, err := metricNames(`sum(rate({job="x"}[5m]))`); err == nil {
		t.Error("a selector without a metric name is accepted")
	}
	if _, err := metricNames(`sum(rate(x[5m])`); err == nil {
		t.Error("an unbalanced expression parses")
	}
}
