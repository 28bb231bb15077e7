package main

import (
	"strings"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/reconcile"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
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

// TestServiceReconciles runs the completer with EFFECTS_RECONCILE_AFTER=1s:
// a pending row nobody published, of a kind with a dispatcher consumer, is
// published again by the service, which logs it and counts it.
func TestServiceReconciles(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	n := testenv.StartNATS(t)
	env := map[string]string{
		"DATABASE_URL": pg.URL, "NATS_URL": n.URL,
		"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_RECONCILE_AFTER": "1s",
	}
	if out, err := command(t, testCtx(t), env, "migrate").CombinedOutput(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	_, js := n.Connect(t)
	if _, err := js.CreateOrUpdateConsumer(testCtx(t), effects.EffectsStream, jetstream.ConsumerConfig{
		Durable: dispatcher.ConsumerName("lost"), FilterSubject: effects.Subject("lost"), AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	var id string
	if err := pg.Pool.QueryRow(testCtx(t), `INSERT INTO effects (kind, created_at) VALUES ('lost', now() - interval '1 hour') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	p := testenv.StartProcess(t, "EFFECTS_COMPLETER_TEST_MAIN", env)
	admin := p.LoopbackAddr(t, "starting", "admin_addr")
	p.WaitForLog(t, "reconciler: published a pending row again")
	s, err := js.Stream(testCtx(t), effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(testCtx(t), effects.Subject("lost"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Header.Get(jetstream.MsgIDHeader), reconcile.MsgIDPrefix+id+":0"; got != want {
		t.Errorf("message id %q, want %q", got, want)
	}
	_, body := testenv.HTTPGet(t, "http://"+admin+"/metrics")
	if want := `effects_reconciler_republished_total{kind="lost"} 1`; !strings.Contains(body, want) {
		t.Errorf("/metrics lacks %s", want)
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, p.Output())
	}
}
