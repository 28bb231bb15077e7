package check

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/effects-run/effects/internal/testenv"
)

// deployedService is one service as a deployment shape runs it.
type deployedService struct {
	where string
	bin   string
	env   map[string]string
}

// deployedServices is every long-running effects service of docker-compose
// and of each kustomization, with the environment it is given.
func deployedServices(t *testing.T) []deployedService {
	t.Helper()
	var out []deployedService
	p := loadCompose(t, "docker-compose.yml")
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		if bin := ourBinary(s); bin != "" && len(s.Command) == 1 {
			out = append(out, deployedService{"compose service " + name, bin, env(s)})
		}
	}
	for _, dir := range kustomizations(t) {
		m := build(t, dir)
		rel, _ := filepath.Rel(repoPath("deployments", "k8s"), dir)
		for _, d := range all[*appsv1.Deployment](m) {
			for _, c := range d.Spec.Template.Spec.Containers {
				if bin := effectsBinary(t, c); bin != "" {
					out = append(out, deployedService{fmt.Sprintf("%s Deployment %s", rel, d.Name), bin, containerEnv(t, m, d.Name, c)})
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].where < out[j].where })
	return out
}

// Every service starts and becomes ready with the settings a deployment
// gives it (only the addresses of NATS, PostgreSQL and its own listeners
// replaced, and one stream replica on the single test server), and stops
// with exit 0 on SIGTERM. A value the service refuses (a duration without a
// unit, a limit out of range) fails here rather than in a rollout.
func TestServicesStartWithTheDeployedSettings(t *testing.T) {
	services := deployedServices(t)
	dir := builtBinaries(t)
	nats := testenv.StartNATS(t)
	pg := testenv.StartPostgres(t)
	migrate := testenv.StartBinary(t, filepath.Join(dir, "completer"), []string{"migrate"}, map[string]string{"DATABASE_URL": pg.URL, "NATS_URL": nats.URL})
	if code := migrate.Wait(t); code != 0 {
		t.Fatalf("completer migrate: exit %d\n%s", code, migrate.Output())
	}
	for _, s := range services {
		t.Run(s.where, func(t *testing.T) {
			env := testenv.MergeEnv(s.env, map[string]string{
				"NATS_URL":                nats.URL,
				"EFFECTS_ADMIN_ADDR":      "127.0.0.1:0",
				"EFFECTS_STREAM_REPLICAS": "1",
			})
			if _, ok := env["DATABASE_URL"]; ok {
				env["DATABASE_URL"] = pg.URL
			}
			if _, ok := env["EFFECTS_HTTP_ADDR"]; ok || s.bin == "ingest" {
				env["EFFECTS_HTTP_ADDR"] = "127.0.0.1:0"
			}
			p := testenv.StartBinary(t, filepath.Join(dir, s.bin), nil, env)
			admin := "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
			p.WaitFor(t, "ready", func() bool {
				resp, err := http.Get(admin + "/readyz")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			})
			p.Signal(t, syscall.SIGTERM)
			if code := p.Wait(t); code != 0 {
				t.Errorf("exit %d after SIGTERM\n%s", code, p.Output())
			}
		})
	}
}
