package main

import (
	"strings"
	"testing"

	"github.com/effects-run/effects/internal/testenv"
)

func TestServiceRefusesBadReconcileAfter(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"15", "-1m", "10ms"} {
		p := testenv.StartProcess(t, "EFFECTS_COMPLETER_TEST_MAIN", map[string]string{
			"DATABASE_URL": "postgres://u@127.0.0.1:1/db", "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_RECONCILE_AFTER": v,
		})
		if code := p.Wait(t); code != 2 || !strings.Contains(p.Output(), "EFFECTS_RECONCILE_AFTER") {
			t.Errorf("EFFECTS_RECONCILE_AFTER=%s: exit %d, want 2 naming the variable:\n%s", v, code, p.Output())
		}
	}
}
