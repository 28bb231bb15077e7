package main

import (
	"strings"
	"syscall"
	"testing"

	"github.com/effects-run/effects/internal/testenv"
)

// TestServiceRemovesRowsPastRetention runs the completer with retention set:
// its pass at start removes the old succeeded row, keeps the rest, and the
// metrics show it.
func TestServiceRemovesRowsPastRetention(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	n := testenv.StartNATS(t)
	env := map[string]string{
		"DATABASE_URL": withPassword(pg.URL, "pw-never-printed"), "NATS_URL": n.URL,
		"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_RETAIN_SUCCEEDED": "1h",
		"EFFECTS_RETAIN_INTERVAL": "1h", // one pass (at start) during the test
	}
	if out, err := command(t, testCtx(t), env, "migrate").CombinedOutput(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	_, err := pg.Pool.Exec(testCtx(t), `
		INSERT INTO effects (kind, status, created_at, completed_at) VALUES
		  ('echo', 'succeeded', now() - interval '3 hours', now() - interval '2 hours'),
		  ('echo', 'succeeded', now() - interval '3 hours', now() - interval '30 minutes'),
		  ('echo', 'failed',    now() - interval '3 hours', now() - interval '2 hours'),
		  ('echo', 'pending',   now() - interval '3 hours', NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	p := testenv.StartProcess(t, "EFFECTS_COMPLETER_TEST_MAIN", env)
	admin := p.LoopbackAddr(t, "starting", "admin_addr")
	p.WaitForLog(t, "retention pass removed rows")
	var left int
	if err := pg.Pool.QueryRow(testCtx(t), `SELECT count(*) FROM effects`).Scan(&left); err != nil || left != 3 {
		t.Fatalf("%d rows left (%v), want 3", left, err)
	}
	_, body := testenv.HTTPGet(t, "http://"+admin+"/metrics")
	for _, want := range []string{
		`effects_retention_removed_total{status="succeeded"} 1`,
		`effects_retention_removed_total{status="failed"} 0`,
		`effects_retention_passes_total{result="done"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, p.Output())
	}
	if strings.Contains(p.Output(), "pw-never-printed") {
		t.Fatalf("the password was logged:\n%s", p.Output())
	}
}

func TestServiceRefusesBadRetention(t *testing.T) {
	t.Parallel()
	for env, want := range map[string]string{
		"EFFECTS_RETAIN_SUCCEEDED": "30d",
		"EFFECTS_RETAIN_FAILED":    "-1h",
		"EFFECTS_RETAIN_INTERVAL":  "0",
	} {
		p := testenv.StartProcess(t, "EFFECTS_COMPLETER_TEST_MAIN", map[string]string{
			"DATABASE_URL": "postgres://u@127.0.0.1:1/db", "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", env: want,
		})
		if code := p.Wait(t); code != 2 || !strings.Contains(p.Output(), env) {
			t.Errorf("%s=%s: exit %d, want 2 naming the variable:\n%s", env, want, code, p.Output())
		}
	}
}
