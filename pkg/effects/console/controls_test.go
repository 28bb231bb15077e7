package console

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/testenv"
)

// paused reads the paused-kinds table: PostgreSQL's word.
func (b *bundle) paused(t *testing.T, kind string) (bool, string) {
	t.Helper()
	var paused bool
	var by *string
	err := b.pg.Pool.QueryRow(context.Background(), `SELECT paused, paused_by FROM effects_paused WHERE kind = $1`, kind).Scan(&paused, &by)
	if err != nil {
		return false, ""
	}
	if by == nil {
		return paused, ""
	}
	return paused, *by
}

// Pause on /kinds stops a kind: an effect published while it is paused
// waits (its page says why), and runs only after Resume, which the page
// offers in its place.
func TestBrowserPauseResume(t *testing.T) {
	bd := setup(t)
	reg := effectsRegistry(t, "flaky")
	bd.runPipeline(t, reg.Registry)
	br := newBrowser(t)
	br.login(bd.srv.URL, testToken, "alice")
	br.open(bd.srv.URL + "/kinds")
	row := `tr[data-kind="flaky"]`
	br.waitJS("the kind listed (its dispatcher consumer)", `!!document.querySelector('`+row+` button.pause')`)
	if br.count(row+" button.resume") != 0 || !strings.Contains(br.text(row), "running") {
		t.Fatalf("before the pause: %q", br.text(row))
	}
	br.submit(row + " button.pause")
	if d := br.lastDialog(); !strings.Contains(d, "Pause kind flaky?") {
		t.Errorf("the confirmation said %q", d)
	}
	if f := br.text("#flash"); !strings.Contains(f, "Paused flaky.") || !strings.Contains(f, "dispatcher confirmed") {
		t.Errorf("flash %q", f)
	}
	if p, by := bd.paused(t, "flaky"); !p || by != "alice (console)" {
		t.Errorf("paused %v by %q", p, by)
	}
	if !strings.Contains(br.text(row+" .badge.paused"), "paused") || br.count(row+" button.resume") != 1 {
		t.Errorf("after the pause the row shows %q", br.text(row))
	}

	id := bd.insert(t, "flaky", "pending", `{}`)
	bd.publish(t, id)
	br.open(bd.srv.URL + "/effects/" + id)
	if !strings.Contains(br.text("#kind-paused"), "Kind flaky is paused") {
		t.Errorf("the pending effect's page does not say its kind is paused:\n%s", br.text("body"))
	}
	br.open(bd.srv.URL + "/?kind=flaky")
	if !strings.Contains(br.text("#filter-paused"), "flaky paused") {
		t.Errorf("the list filtered by a paused kind does not say so")
	}

	br.open(bd.srv.URL + "/kinds")
	resumed := time.Now()
	br.submit(row + " button.resume")
	if f := br.text("#flash"); !strings.Contains(f, "Resumed flaky.") {
		t.Errorf("flash %q", f)
	}
	bd.waitStatus(t, id, "succeeded")
	if first := reg.firstCall(id); first.Before(resumed) {
		t.Errorf("the effect ran at %s, before the resume at %s", first, resumed)
	}
	if p, _ := bd.paused(t, "flaky"); p {
		t.Errorf("still paused in PostgreSQL")
	}
	br.waitJS("Pause offered again", `!!document.querySelector('`+row+` button.pause')`)
	br.noProblems()
}

// Cancel on a pending effect's page cancels it: the row is cancelled with
// who and when, the dispatcher settles its message without running it,
// and the page offers neither Cancel nor Retry any more.
func TestBrowserCancel(t *testing.T) {
	bd := setup(t)
	reg := effectsRegistry(t, "flaky")
	bd.runPipeline(t, reg.Registry)
	// Paused, so that the effect is surely still pending when Cancel is
	// pressed.
	if rep, err := bd.h.control.Pause(context.Background(), []string{"flaky"}, "test"); err != nil || !rep.OK() {
		t.Fatalf("pause: %+v %v", rep, err)
	}
	id := bd.insert(t, "flaky", "pending", `{}`)
	bd.publish(t, id)

	br := newBrowser(t)
	br.login(bd.srv.URL, testToken, "alice")
	br.open(bd.srv.URL + "/effects/" + id)
	if br.count("#retry") != 0 {
		t.Errorf("a pending effect offers Retry")
	}
	br.submit("#cancel")
	if d := br.lastDialog(); !strings.Contains(d, "Cancel effect "+id) {
		t.Errorf("the confirmation said %q", d)
	}
	if f := br.text("#flash"); !strings.Contains(f, "Cancelled.") {
		t.Errorf("flash %q", f)
	}
	if got := br.text("#status"); got != "cancelled" {
		t.Errorf("status on the page %q", got)
	}
	if c := br.text("#cancelled"); !strings.Contains(c, "by alice (console)") {
		t.Errorf("cancelled field %q", c)
	}
	if br.count("#cancel")+br.count("#retry") != 0 {
		t.Errorf("a cancelled effect offers an action")
	}
	if s := bd.status(t, id); s != "cancelled" {
		t.Fatalf("row %s", s)
	}

	// Resumed, the dispatcher settles the cancelled effect's message (it
	// is acknowledged) without running the handler.
	if rep, err := bd.h.control.Resume(context.Background(), []string{"flaky"}, "test"); err != nil || !rep.OK() {
		t.Fatalf("resume: %+v %v", rep, err)
	}
	later := bd.insert(t, "flaky", "pending", `{}`)
	bd.publish(t, later)
	bd.waitStatus(t, later, "succeeded")
	row, err := bd.h.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the cancelled effect's message acknowledged", func() bool {
		loc, err := operator.Locate(context.Background(), bd.js, *row)
		return err == nil && len(loc.Messages) == 1 && loc.Messages[0].State == "acknowledged"
	})
	if n := reg.calls(id); n != 0 {
		t.Errorf("the cancelled effect's handler ran %d times", n)
	}
	if s := bd.status(t, id); s != "cancelled" {
		t.Errorf("row %s after the dispatcher saw it", s)
	}
	br.noProblems()
}

// The controls' refusals: read-only, by GET, bad kinds, a final effect.
func TestControlRefusals(t *testing.T) {
	bd := setup(t)
	failed := bd.insert(t, "send_email", "failed", `{}`)
	pending := bd.insert(t, "send_email", "pending", `{}`)
	for _, path := range []string{"/effects/" + pending + "/cancel", "/kinds/send_email/pause", "/kinds/send_email/resume"} {
		if resp, _ := bd.request(t, "POST", path, testReadOnly, url.Values{}, nil); resp.StatusCode != http.StatusForbidden {
			t.Errorf("read-only POST %s: %d, want 403", path, resp.StatusCode)
		}
		if resp, _ := bd.request(t, "GET", path, testToken, nil, nil); resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 405 or 404", path, resp.StatusCode)
		}
		if resp, _ := bd.request(t, "POST", path, testToken, url.Values{}, map[string]string{"Sec-Fetch-Site": "cross-site"}); resp.StatusCode != http.StatusForbidden {
			t.Errorf("cross-site POST %s: %d, want 403", path, resp.StatusCode)
		}
	}
	if s := bd.status(t, pending); s != "pending" {
		t.Errorf("the pending row is %s", s)
	}
	if p, _ := bd.paused(t, "send_email"); p {
		t.Errorf("send_email was paused")
	}
	if resp, _ := bd.request(t, "POST", "/kinds/a.b/pause", testToken, url.Values{}, nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("pause of an invalid kind: %d, want 400", resp.StatusCode)
	}
	// A failed effect: refused, with its status named, and left as it is.
	resp, _ := bd.request(t, "POST", "/effects/"+failed+"/cancel", testToken, url.Values{}, nil)
	var flash string
	for _, c := range resp.Cookies() {
		if c.Name == flashCookie {
			flash = c.Value
		}
	}
	_, body := bd.request(t, "GET", "/effects/"+failed, testToken, nil, map[string]string{"Cookie": flashCookie + "=" + flash})
	if !strings.Contains(body, "Not cancelled: it is failed: only a pending effect can be cancelled") {
		t.Errorf("the refusal is not shown:\n%s", body)
	}
	if s := bd.status(t, failed); s != "failed" {
		t.Errorf("the failed row is %s", s)
	}
	// A cancelled effect is not retried.
	if _, err := bd.h.control.Cancel(context.Background(), []string{pending}, "test"); err != nil {
		t.Fatal(err)
	}
	if _, body := bd.request(t, "GET", "/effects/"+pending, testToken, nil, nil); strings.Contains(body, ">Retry</button>") ||
		strings.Contains(body, ">Cancel</button>") {
		t.Errorf("a cancelled effect offers an action")
	}
	bd.request(t, "POST", "/effects/"+pending+"/retry", testToken, url.Values{}, nil)
	if _, asked := bd.rerunBy(t, pending); asked || bd.published(t) != 0 {
		t.Errorf("a cancelled effect was re-run")
	}
}
