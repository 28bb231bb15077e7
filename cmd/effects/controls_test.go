package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

func controlJSON(t *testing.T, wantCode int, args ...string) control.Report {
	t.Helper()
	code, out, errOut := runEffects(append([]string{args[0], "--json"}, args[1:]...)...)
	if code != wantCode {
		t.Fatalf("effects %v: exit %d, want %d\n%s%s", args, code, wantCode, out, errOut)
	}
	var rep control.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	return rep
}

// Not parallel: the commands read the process environment (t.Setenv).
func TestPauseResumeCancelCommands(t *testing.T) {
	pg, ids := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)
	ctx := context.Background()

	// The bucket as the completer makes it, and a dispatcher watching it.
	if _, err := control.NewSyncer(pg.Pool, js, schema.Table{Name: "effects"}, control.SyncOptions{}).Once(ctx); err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	for _, k := range []string{"echo", "mail"} {
		reg.Handle(k, func(context.Context, effects.Effect) (any, error) { return nil, nil })
	}
	_, djs := n.Connect(t)
	d, err := dispatcher.New(dispatcher.Config{}, reg, djs, nil, prometheus.NewRegistry(), dispatcher.WithControls())
	if err != nil {
		t.Fatal(err)
	}
	dctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = d.Run(dctx) }()
	t.Cleanup(func() { stop(); <-done })
	testenv.WaitFor(t, 30*time.Second, "the dispatcher ready", func() bool { return d.Ready(ctx) == nil })

	rep := controlJSON(t, 0, "pause", "--by", "alice", "echo")
	if !rep.Confirmed || rep.Dispatchers != 1 || rep.Results[0].Outcome != control.OutcomePaused || *rep.Results[0].By != "alice" {
		t.Fatalf("pause: %+v", rep)
	}
	// A pending effect of a paused kind says why it does not run.
	code, out, _ := runEffects("show", ids["echo-pending"])
	if code != 0 || !strings.Contains(out, "kind paused:") || !strings.Contains(out, "by alice (effects resume echo)") {
		t.Fatalf("show: exit %d\n%s", code, out)
	}
	rep = controlJSON(t, 0, "pause", "--by", "alice", "mail")
	controlJSON(t, 0, "resume", "echo")
	for _, k := range statsOf(t).Kinds {
		if paused := k.Paused != nil; paused != (k.Kind == "mail") || (paused && *k.Paused.By != "alice") {
			t.Errorf("stats kind %s paused %+v", k.Kind, k.Paused)
		}
	}
	if code, out, _ := runEffects("stats"); code != 0 || !strings.Contains(out, "CANCELLED") || !strings.Contains(out, "by alice") {
		t.Errorf("stats table:\n%s", out)
	}

	// Cancel: the pending row; the succeeded one is refused (exit 1) and
	// left as it is.
	rep = controlJSON(t, 0, "cancel", "--by", "bob", ids["echo-pending"])
	if r := rep.Results[0]; r.Outcome != control.OutcomeCancelled || r.Status != "pending" || *r.By != "bob" || !rep.Confirmed {
		t.Fatalf("cancel: %+v", rep)
	}
	rep = controlJSON(t, 1, "cancel", ids["mail-succeeded"])
	if r := rep.Results[0]; r.Outcome != control.OutcomeRefused || !strings.Contains(r.Error, "it is succeeded") {
		t.Fatalf("cancel of a succeeded effect: %+v", rep)
	}
	code, out, errOut := runEffects("cancel", ids["mail-failed"])
	if code != 1 || !strings.Contains(out, "it is failed") || !strings.Contains(errOut, "1 of 1 could not be cancelled") {
		t.Fatalf("cancel of a failed effect: exit %d\n%s%s", code, out, errOut)
	}
	rows := listJSON(t, "--status", "cancelled")
	if len(rows) != 1 || rows[0].ID != ids["echo-pending"] || rows[0].CancelledBy == nil || *rows[0].CancelledBy != "bob" || rows[0].CancelledAt == nil {
		t.Fatalf("list --status cancelled: %+v", rows)
	}
	if st := statsOf(t); st.Total.Cancelled != 1 || st.Total.Pending != 0 {
		t.Errorf("stats totals %+v", st.Total)
	}
	// A cancelled effect is not re-run.
	res := retryJSON(t, 1, ids["echo-pending"])
	if res.Results[0].Outcome != "error" || !strings.Contains(res.Results[0].Error, "cancelled") {
		t.Fatalf("retry of a cancelled effect: %+v", res)
	}
	code, out, _ = runEffects("show", ids["echo-pending"])
	if code != 0 || !strings.Contains(out, "cancelled:") || !strings.Contains(out, "by bob") {
		t.Fatalf("show: exit %d\n%s", code, out)
	}

	rep = controlJSON(t, 0, "resume", "--by", "carol", "mail")
	if rep.Results[0].Outcome != control.OutcomeResumed || !rep.Confirmed {
		t.Fatalf("resume: %+v", rep)
	}

	// Bad arguments change nothing.
	for _, args := range [][]string{{"pause"}, {"pause", "not a kind"}, {"cancel", "not-an-id"}, {"resume", "--wait", "0", "mail"}} {
		if code, _, _ := runEffects(args...); code != 2 {
			t.Errorf("effects %v: exit %d, want 2", args, code)
		}
	}
}

// Without NATS the change is recorded in PostgreSQL and reported as not
// confirmed (exit 1); the completer tells the dispatchers later.
func TestControlWithoutNATS(t *testing.T) {
	pg, _ := oncallTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	code, out, errOut := runEffects("pause", "mail")
	if code != 1 || !strings.Contains(errOut, "not written to the bucket") && !strings.Contains(errOut, "dispatchers were not told") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	kinds, err := control.New(pg.Pool, nil, schema.Table{Name: "effects"}, control.Options{}).Kinds(context.Background())
	if err != nil || len(kinds) != 1 || !kinds[0].Paused {
		t.Fatalf("kinds %+v, %v", kinds, err)
	}
}

func statsOf(t *testing.T) operator.Stats {
	t.Helper()
	code, out, errOut := runEffects("stats", "--json")
	if code != 0 {
		t.Fatalf("stats: exit %d\n%s", code, errOut)
	}
	var st operator.Stats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	return st
}
