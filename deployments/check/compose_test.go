package check

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"

	"github.com/effects-run/effects/internal/ingest"
)

// loadCompose loads compose files the way `docker compose -f ... config`
// does, with an empty environment, so every ${VAR:-default} takes its
// default.
func loadCompose(t *testing.T, files ...string) *types.Project {
	t.Helper()
	root, err := filepath.Abs(RepoRoot)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range files {
		paths = append(paths, filepath.Join(root, f))
	}
	opts, err := cli.NewProjectOptions(paths,
		cli.WithWorkingDirectory(root),
		cli.WithEnv([]string{}),
		cli.WithInterpolation(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose-go cannot load %v: %v", files, err)
	}
	return p
}

func env(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		} else {
			out[k] = ""
		}
	}
	return out
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ourBinary is the effects binary a compose service runs, or "" for a
// service of another image.
func ourBinary(s types.ServiceConfig) string {
	if s.Build == nil || len(s.Command) == 0 {
		return ""
	}
	return s.Command[0]
}

// checkComposeProject checks what must hold for every way of running the
// compose files.
func checkComposeProject(t *testing.T, p *types.Project, pending map[string]string) {
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		where := "compose service " + name
		// A dependency on a healthy service needs a health check there, or
		// `docker compose up` waits for ever.
		for dep, d := range s.DependsOn {
			target, ok := p.Services[dep]
			switch {
			case !ok:
				t.Errorf("%s: depends on %s, which does not run", where, dep)
			case d.Condition == types.ServiceConditionHealthy && (target.HealthCheck == nil || target.HealthCheck.Disable || len(target.HealthCheck.Test) == 0):
				t.Errorf("%s: waits for %s to be healthy, which has no health check", where, dep)
			}
		}
		bin := ourBinary(s)
		if bin == "" {
			if why := imagePinned(s.Image); why != "" {
				t.Errorf("%s: image not pinned: %s", where, why)
			}
			continue
		}
		// Built from the Dockerfile: never pulled from a registry.
		if s.PullPolicy != types.PullPolicyBuild {
			t.Errorf("%s: built from the Dockerfile, so pull_policy must be build (is %q)", where, s.PullPolicy)
		}
		if s.Build.Dockerfile != "Dockerfile" {
			t.Errorf("%s: builds %q, want the repository's Dockerfile", where, s.Build.Dockerfile)
		}
		e := env(s)
		checkEnvNames(t, where, bin, keys(e), pending)
		if len(s.Command) > 1 { // completer migrate: a one-shot
			if s.Restart != "no" {
				t.Errorf("%s: a one-shot command must have restart: \"no\" (is %q)", where, s.Restart)
			}
			continue
		}
		admin := defaultAdminPorts[bin]
		if a := e["EFFECTS_ADMIN_ADDR"]; a != "" {
			admin = portOf(t, where+" EFFECTS_ADMIN_ADDR", a)
		}
		if s.HealthCheck == nil || !strings.Contains(strings.Join(s.HealthCheck.Test, " "), fmt.Sprintf("http://127.0.0.1:%d/healthz", admin)) {
			t.Errorf("%s: health check must ask /healthz on the admin port %d", where, admin)
		}
		published := false
		for _, port := range s.Ports {
			published = published || port.Target == uint32(admin)
		}
		if !published {
			t.Errorf("%s: the admin port %d is not published (/metrics, /healthz for people)", where, admin)
		}
		// The whole stop fits in EFFECTS_SHUTDOWN_TIMEOUT (one deadline);
		// compose kills the service stop_grace_period after SIGTERM.
		if need := shutdownTimeout(t, where, e) + exitMargin; s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) < need {
			t.Errorf("%s: stop_grace_period must be at least %s (EFFECTS_SHUTDOWN_TIMEOUT and %s to exit)", where, need, exitMargin)
		}
		for dep, d := range s.DependsOn {
			if dep == "nats" && d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s: must wait for nats to be healthy", where)
			}
		}
		if _, ok := s.DependsOn["nats"]; !ok {
			t.Errorf("%s: does not depend on nats", where)
		}
		if e["NATS_URL"] != "nats://nats:4222" {
			t.Errorf("%s: NATS_URL=%q, want nats://nats:4222", where, e["NATS_URL"])
		}
		if e["DATABASE_URL"] != "" {
			if d, ok := s.DependsOn["migrate"]; !ok || d.Condition != types.ServiceConditionCompletedSuccessfully {
				t.Errorf("%s: uses the database, so must wait for migrate to complete", where)
			}
		}
	}
}

func TestCompose(t *testing.T) {
	p := loadCompose(t, "docker-compose.yml")
	checkComposeProject(t, p, nil)

	for _, name := range []string{"postgres", "nats", "migrate", "hasura", "ingest", "dispatcher", "completer", "prometheus", "grafana"} {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("docker-compose.yml has no service %s", name)
		}
	}
	if t.Failed() {
		return
	}
	if got, want := p.Services["nats"].Image, "nats:"+natsServerVersion(t)+"-alpine"; got != want {
		t.Errorf("nats image %s, want %s: the nats-server version the tests embed (go.mod)", got, want)
	}
	if got := p.Services["migrate"].Command; !slices.Equal(got, []string{"completer", "migrate"}) {
		t.Errorf("migrate runs %v, want completer migrate", got)
	}
	hasura := p.Services["hasura"]
	for dep, cond := range map[string]string{
		"postgres": types.ServiceConditionHealthy,
		"migrate":  types.ServiceConditionCompletedSuccessfully,
		"ingest":   types.ServiceConditionHealthy,
	} {
		if d, ok := hasura.DependsOn[dep]; !ok || d.Condition != cond {
			t.Errorf("hasura must depend on %s with condition %s", dep, cond)
		}
	}
	checkHasuraInCompose(t, p)
	checkPrometheusInCompose(t, p)
	checkGrafanaInCompose(t, p)
}

// checkHasuraInCompose: Hasura's environment has every variable its
// metadata reads, and those point at the ingest's webhook with the ingest's
// secret.
func checkHasuraInCompose(t *testing.T, p *types.Project) {
	hasura, ingestSvc := p.Services["hasura"], p.Services["ingest"]
	he, ie := env(hasura), env(ingestSvc)
	if !hasMount(hasura, repoPath("deployments", "hasura", "metadata"), he["HASURA_GRAPHQL_METADATA_DIR"]) {
		t.Errorf("hasura: deployments/hasura/metadata is not mounted at HASURA_GRAPHQL_METADATA_DIR (%q)", he["HASURA_GRAPHQL_METADATA_DIR"])
	}
	md := loadHasuraMetadata(t)
	for _, name := range md.fromEnv {
		if he[name] == "" {
			t.Errorf("hasura: the metadata reads %s from Hasura's environment, which does not set it", name)
		}
	}
	tr := md.trigger
	u, err := url.Parse(he[tr.WebhookFromEnv])
	if err != nil {
		t.Fatalf("hasura: %s=%q: %v", tr.WebhookFromEnv, he[tr.WebhookFromEnv], err)
	}
	httpPort := portOf(t, "ingest EFFECTS_HTTP_ADDR", cmpOr(ie["EFFECTS_HTTP_ADDR"], ingest.DefaultHTTPAddr))
	if u.Hostname() != "ingest" || u.Port() != strconv.Itoa(httpPort) || u.Path != ingest.EventsPath {
		t.Errorf("hasura: %s=%q, want http://ingest:%d%s (the ingest's service, EFFECTS_HTTP_ADDR and path)", tr.WebhookFromEnv, u, httpPort, ingest.EventsPath)
	}
	secret := he[tr.secretEnv]
	if tr.secretEnv == "" {
		t.Errorf("hasura: the trigger sends no %s header from Hasura's environment", ingest.SecretHeader)
	} else if secret == "" || secret != ie["EFFECTS_WEBHOOK_SECRET"] {
		t.Errorf("hasura: %s must be the ingest's EFFECTS_WEBHOOK_SECRET", tr.secretEnv)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// hasMount reports whether source is bind-mounted at target.
func hasMount(s types.ServiceConfig, source, target string) bool {
	abs, _ := filepath.Abs(source)
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeBind && filepath.Clean(v.Source) == abs && v.Target == target && target != "" {
			return true
		}
	}
	return false
}

// checkPrometheusInCompose: Prometheus is given the repository's config and
// rules, and scrapes every effects service on its admin port, as a job named
// after the service (the rules select on it).
func checkPrometheusInCompose(t *testing.T, p *types.Project) {
	prom := p.Services["prometheus"]
	if !hasMount(prom, repoPath("deployments", "prometheus", "prometheus.yml"), "/etc/prometheus/prometheus.yml") ||
		!hasMount(prom, repoPath("deployments", "prometheus", "rules"), "/etc/prometheus/rules") {
		t.Error("prometheus: deployments/prometheus/prometheus.yml and rules/ must be mounted in /etc/prometheus")
	}
	if !slices.Contains(prom.Command, "--config.file=/etc/prometheus/prometheus.yml") {
		t.Errorf("prometheus: command %v does not load /etc/prometheus/prometheus.yml", prom.Command)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, "deployments", "prometheus", "prometheus.yml"), &cfg); err != nil {
		t.Fatal(err)
	}
	scraped := map[string]string{}
	for _, sc := range cfg.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				scraped[target] = sc.JobName
			}
		}
	}
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		bin := ourBinary(s)
		if bin == "" || len(s.Command) > 1 {
			continue
		}
		port := defaultAdminPorts[bin]
		if a := env(s)["EFFECTS_ADMIN_ADDR"]; a != "" {
			port = portOf(t, name, a)
		}
		target := fmt.Sprintf("%s:%d", name, port)
		if job, ok := scraped[target]; !ok || job != name {
			t.Errorf("prometheus.yml: %s is not scraped as job %q (scraped: %v)", target, name, scraped)
		}
	}
}

// checkGrafanaInCompose: Grafana is given the provisioning and the
// dashboards, where the dashboard provider looks for them.
func checkGrafanaInCompose(t *testing.T, p *types.Project) {
	g := p.Services["grafana"]
	if !hasMount(g, repoPath("deployments", "grafana", "provisioning"), "/etc/grafana/provisioning") {
		t.Error("grafana: deployments/grafana/provisioning is not mounted at /etc/grafana/provisioning")
	}
	var prov struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, "deployments", "grafana", "provisioning", "dashboards", "effects.yml"), &prov); err != nil {
		t.Fatal(err)
	}
	if len(prov.Providers) != 1 || !hasMount(g, repoPath("deployments", "grafana", "dashboards"), prov.Providers[0].Options.Path) {
		t.Error("grafana: deployments/grafana/dashboards is not mounted where the dashboard provider reads")
	}
	ds := grafanaDatasource(t)
	if u, err := url.Parse(ds.URL); err != nil || u.Hostname() != "prometheus" || u.Port() != "9090" {
		t.Errorf("grafana data source URL %q, want the compose service prometheus on 9090", ds.URL)
	}
}

// The table source, for teams without Hasura: Hasura does not start, and
// the ingest reads the table.
func TestComposeTableSource(t *testing.T) {
	p := loadCompose(t, "docker-compose.yml", "docker-compose.table.yml")
	checkComposeProject(t, p, nil)
	if _, ok := p.Services["hasura"]; ok {
		t.Error("hasura runs with the table source")
	}
	if _, ok := p.DisabledServices["hasura"]; !ok {
		t.Error("hasura is not among the disabled services")
	}
	e := env(p.Services["ingest"])
	if e["EFFECTS_SOURCE"] != "table" || e["DATABASE_URL"] != env(p.Services["completer"])["DATABASE_URL"] {
		t.Errorf("ingest: EFFECTS_SOURCE=%q and DATABASE_URL must be table and the completer's database", e["EFFECTS_SOURCE"])
	}
	for _, name := range []string{"postgres", "nats", "migrate", "ingest", "dispatcher", "completer", "prometheus", "grafana"} {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("no service %s with the table source", name)
		}
	}
}

func TestImagePinned(t *testing.T) {
	for ref, pinned := range map[string]bool{
		"postgres:15.14":     true,
		"nats:2.15.3-alpine": true,
		"hasura/graphql-engine:v2.48.5.cli-migrations-v3": true,
		"prom/prometheus:v3.5.0":                          true,
		"grafana/grafana@sha256:0123abcd":                 true,
		"postgres":                                        false,
		"postgres:latest":                                 false,
		"postgres:15":                                     false,
		"nats:alpine":                                     false,
		"registry:5000/app":                               false,
		"alpine:3.22":                                     false,
		"golang:1.26-alpine":                              false,
		"postgres:15.14-alpine":                           true,
		"nats:2.15":                                       false,
	} {
		if got := imagePinned(ref) == ""; got != pinned {
			t.Errorf("imagePinned(%q) = %q, want pinned=%t", ref, imagePinned(ref), pinned)
		}
	}
}
