package faulttest

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

func post(t *testing.T, url, header, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if header != "" {
		req.Header.Set(EffectIDHeader, header)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestTargetCountsPerEffectIDAndRefusesFirstCalls(t *testing.T) {
	tg := StartTarget(t, TargetConfig{Fail: 1, RetryAfter: time.Second})
	if code := post(t, tg.URL, "a", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("first call: %d, want 503", code)
	}
	for range 2 {
		if code := post(t, tg.URL, "a", ""); code != http.StatusOK {
			t.Fatalf("call: %d", code)
		}
	}
	if code := post(t, tg.URL, "", ""); code != http.StatusBadRequest {
		t.Fatalf("no key: %d", code)
	}
	if tg.Done("a") != 2 || tg.Refused("a") != 1 || tg.NoKey() != 1 || tg.Calls() != 4 || tg.DoneCounts()["a"] != 2 {
		t.Fatalf("done %d refused %d nokey %d calls %d", tg.Done("a"), tg.Refused("a"), tg.NoKey(), tg.Calls())
	}
}

func TestTargetCountsPerPayloadKey(t *testing.T) {
	tg := StartTarget(t, TargetConfig{Key: "n"})
	post(t, tg.URL, "ignored", `{"n": 7}`)
	post(t, tg.URL, "", `{"n": "x"}`)
	post(t, tg.URL, "", `{"n": "x"}`)
	if tg.Done("7") != 1 || tg.Done("x") != 2 || tg.Done("ignored") != 0 {
		t.Fatalf("counts %v", tg.DoneCounts())
	}
}

func TestDriverRetriesHonouringRetryAfter(t *testing.T) {
	var n atomic.Int32
	var gotSecret, gotRetry atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotSecret.Store(r.Header.Get(SecretHeader))
		switch n.Add(1) {
		case 1:
			// A connection cut before any reply.
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
		case 2:
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			b, _ := io.ReadAll(r.Body)
			gotRetry.Store(string(b))
		}
	}))
	defer srv.Close()
	d := &Driver{URL: srv.URL, Secret: "s3", Interval: 10 * time.Millisecond}
	start := time.Now()
	code, err := d.Deliver(context.Background(), NewEvent("INSERT", []byte(`{"id":"x"}`)))
	if err != nil || code != http.StatusOK {
		t.Fatalf("deliver: %d %v", code, err)
	}
	if took := time.Since(start); took < time.Second {
		t.Fatalf("took %s: Retry-After 1 not honoured", took)
	}
	s := d.Stats()
	if s.ConnErrors.Load() != 1 || s.Unavailable.Load() != 1 || s.OK.Load() != 1 || s.RetryAfterHonoured.Load() != 1 {
		t.Fatalf("stats: conn %d 503 %d ok %d retry-after %d", s.ConnErrors.Load(), s.Unavailable.Load(), s.OK.Load(), s.RetryAfterHonoured.Load())
	}
	if gotSecret.Load() != "s3" || !strings.Contains(gotRetry.Load().(string), `"current_retry":2`) {
		t.Fatalf("secret %v, body %v", gotSecret.Load(), gotRetry.Load())
	}
}

func TestDriverStopsOnA4xxAndDeliversConcurrently(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) > 3 {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	defer srv.Close()
	d := &Driver{URL: srv.URL, Interval: time.Millisecond}
	ev := NewEvent("INSERT", []byte(`{}`))
	if err := d.DeliverConcurrently(context.Background(), ev, 3); err != nil {
		t.Fatal(err)
	}
	if err := d.DeliverTwice(context.Background(), ev); err == nil {
		t.Fatal("a 401 was taken for delivered")
	}
	if n.Load() != 4 || d.Stats().Other.Load() != 1 {
		t.Fatalf("%d posts, %d other", n.Load(), d.Stats().Other.Load())
	}
}

func TestVerifyReportsLostCompletedTwiceAndRunTwice(t *testing.T) {
	pg := testenv.StartPostgres(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := schema.Migrate(ctx, conn, "effects"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := InstallAudit(ctx, pg.Pool, "effects"); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, name := range []string{"ok", "pending", "twice", "rerun", "ranTwice", "notRun"} {
		var id string
		if err := pg.Pool.QueryRow(ctx, `INSERT INTO effects (kind) VALUES ('k') RETURNING id::text`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[name] = id
	}
	complete := func(name, status string) {
		if _, err := pg.Pool.Exec(ctx, `UPDATE effects SET status = $2, completed_at = clock_timestamp() WHERE id = $1`, ids[name], status); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"ok", "twice", "rerun", "ranTwice", "notRun"} {
		complete(n, "succeeded")
	}
	complete("twice", "succeeded")
	complete("rerun", "succeeded")
	// Not a completion write: the reconciler's mark.
	if _, err := pg.Pool.Exec(ctx, `UPDATE effects SET published_at = now() WHERE id = $1`, ids["ok"]); err != nil {
		t.Fatal(err)
	}
	runs := map[string]int{ids["ok"]: 1, ids["twice"]: 1, ids["rerun"]: 2, ids["ranTwice"]: 2}
	all := []string{"ffffffff-ffff-4fff-bfff-ffffffffffff"} // no row at all
	for _, id := range ids {
		all = append(all, id)
	}
	rep, err := Verify(ctx, pg.Pool, "effects", all, VerifyOptions{
		Reruns: map[string]bool{ids["rerun"]: true},
		Runs:   func(id string) int { return runs[id] },
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Report{Sent: 7, Lost: []string{ids["pending"], all[0]}, CompletedTwice: []string{ids["twice"]}, RunTwice: []string{ids["ranTwice"]}, NotRun: []string{ids["notRun"]}}
	if rep.Sent != want.Sent || strings.Join(rep.CompletedTwice, ",") != strings.Join(want.CompletedTwice, ",") ||
		strings.Join(rep.RunTwice, ",") != strings.Join(want.RunTwice, ",") || strings.Join(rep.NotRun, ",") != strings.Join(want.NotRun, ",") ||
		len(rep.Lost) != 2 || rep.Statuses["succeeded"] != 5 || rep.Statuses["(no row)"] != 1 || rep.OK() {
		t.Fatalf("report:\n%s", rep)
	}
	if n, err := Final(ctx, pg.Pool, "effects", all); err != nil || n != 5 {
		t.Fatalf("final %d %v", n, err)
	}
}

func TestResultAppendsMarkdownRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results.md")
	r := Result{Fault: "kill | 9", Injection: "SIGKILL", RunTwiceAllowed: "≤ in flight", Heal: 1234 * time.Millisecond}.
		FromReport(Report{Sent: 10, RunTwice: []string{"a"}})
	for range 2 {
		if err := r.AppendMarkdown(path); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(path)
	row := "| kill \\| 9 | SIGKILL | 10 | 0 | 0 | 1 (≤ in flight) | 1.2s |\n"
	if string(got) != MarkdownHeader+row+row {
		t.Fatalf("file:\n%s", got)
	}
}

func TestMetricValue(t *testing.T) {
	text := `# HELP effects_handled_total x
effects_handled_total{kind="a",outcome="failed"} 2
effects_handled_total{kind="b",outcome="failed"} 3
effects_handled_total{kind="a",outcome="succeeded"} 40
effects_handled_total_other 7
effects_in_flight 1.5
`
	for series, want := range map[string]float64{
		`effects_handled_total`:                            45,
		`effects_handled_total{kind="a"`:                   42,
		`effects_handled_total{kind="b",outcome="failed"}`: 3,
		`effects_in_flight`:                                1.5,
		`effects_handled_total{kind="c",outcome="failed"}`: 0,
	} {
		if got := MetricValue(text, series); got != want {
			t.Errorf("%s: %v, want %v", series, got, want)
		}
	}
}
