package console

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/effects-run/effects/internal/testenv"
)

// screenshots, when set, is the directory TestScreenshots writes the
// docs' pictures of the console into (make console-screenshots).
var screenshots = flag.String("screenshots", "", "write the console's screenshots (PNG) into this directory, e.g. docs/console")

// chromiumPath finds the browser the tests drive: EFFECTS_TEST_CHROMIUM, or
// chromium (Debian's package) on PATH. Without one the tests fail: they
// are part of `make test`, and CI installs Chromium (.ci/run).
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("EFFECTS_TEST_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the console's browser tests need Chromium: apt-get install chromium (.ci/run does), or set EFFECTS_TEST_CHROMIUM to a Chrome or Chromium binary")
	return ""
}

// browser is a headless Chromium with a tab of its own. It answers every
// confirmation with accept, and records the dialogs it saw and anything
// the page reported as an error (an exception, console.error, a resource
// that failed, a policy violation), which a test expects to be none.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	accept   bool
	dialogs  []string
	problems []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	b := &browser{t: t, accept: true}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithListener(b.event))
	b.ctx = ctx
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first call starts the browser (with no deadline: one would end
	// the browser with it); the log domain reports policy violations and
	// failed loads.
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return b
}

func (b *browser) event(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch e := ev.(type) {
	case *page.EventJavascriptDialogOpening:
		b.dialogs = append(b.dialogs, e.Message)
		accept := b.accept
		go func() {
			_, _ = chromedp.Call(b.ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: accept})
		}()
	case *runtime.EventExceptionThrown:
		b.problems = append(b.problems, "exception: "+e.ExceptionDetails.Text)
	case *runtime.EventConsoleAPICalled:
		if e.Type == runtime.ConsoleAPICalledTypeError {
			b.problems = append(b.problems, "console.error")
		}
	case *cdplog.EventEntryAdded:
		if e.Entry.Level == cdplog.EntryLevelError {
			b.problems = append(b.problems, fmt.Sprintf("%s: %s (%s)", e.Entry.Source, e.Entry.Text, e.Entry.URL))
		}
	}
}

// do runs the actions, failing the test after 30 seconds.
func (b *browser) do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v (at %s)", err, b.location())
	}
}

func (b *browser) location() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	return loc
}

// eval returns the value of a JavaScript expression.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("browser: %s: %v", expr, err)
	}
	return v
}

// waitJS waits until a JavaScript expression is true. It evaluates the
// expression again and again rather than with chromedp.Poll, whose wait
// ends with an error when the page navigates meanwhile (a form posted).
func (b *browser) waitJS(what, expr string) {
	b.t.Helper()
	done := false
	defer func() {
		if !done { // timed out: say where the browser was
			b.t.Logf("browser at %s, page:\n%s", b.location(), b.text("body"))
		}
	}()
	testenv.WaitFor(b.t, 30*time.Second, what+" ("+expr+")", func() bool {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		return err == nil && ok
	})
	done = true
}

// open navigates to url and waits for the page.
func (b *browser) open(url string) {
	b.t.Helper()
	b.do(chromedp.Navigate(url), chromedp.WaitReady(chromedp.CSS("body")))
}

// text is the text of the first element sel matches ("" when none).
func (b *browser) text(sel string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, _ := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q) || {}).innerText || ""`, sel)))
	return v
}

func (b *browser) count(sel string) int {
	b.t.Helper()
	return eval[int](b, fmt.Sprintf(`document.querySelectorAll(%q).length`, sel))
}

// submit clicks a form's button and waits for the page it leads to (a new
// document: the marker set on the old one is gone).
func (b *browser) submit(button string) {
	b.t.Helper()
	b.do(chromedp.Evaluate[chromedp.Void](`window.__before = 1`))
	b.do(chromedp.Click(chromedp.CSS(button)))
	b.waitJS("the next page", `window.__before === undefined && document.readyState === "complete"`)
}

// login logs in through the login page.
func (b *browser) login(base, token, name string) {
	b.t.Helper()
	b.open(base + "/login")
	b.do(chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.SendKeys(chromedp.CSS("#name"), name))
	b.submit("#login")
	if loc := b.location(); strings.Contains(loc, "/login") {
		b.t.Fatalf("still on the login page after logging in: %s\n%s", loc, b.text("body"))
	}
}

func (b *browser) noProblems() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		b.t.Errorf("the page reported: %s", p)
	}
	b.problems = nil
}

// expectFailedLoads is noProblems for a page that was meant to get code: a
// failed load with that status is all it may have reported.
func (b *browser) expectFailedLoads(code int) {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		if !strings.Contains(p, fmt.Sprintf("status of %d", code)) {
			b.t.Errorf("the page reported: %s", p)
		}
	}
	b.problems = nil
}

func (b *browser) lastDialog() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.dialogs) == 0 {
		return ""
	}
	return b.dialogs[len(b.dialogs)-1]
}

func (b *browser) setAccept(accept bool) {
	b.mu.Lock()
	b.accept = accept
	b.mu.Unlock()
}

// shownIDs are the effect ids in the list, as written (in full).
func (b *browser) shownIDs() []string {
	b.t.Helper()
	return eval[[]string](b, `Array.from(document.querySelectorAll("table.effects td.id a")).map(a => a.textContent)`)
}

func sameSet(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	seen := map[string]bool{}
	for _, g := range got {
		seen[g] = true
	}
	for _, w := range want {
		if !seen[w] {
			return false
		}
	}
	return true
}

// The list shows the rows with their ids in full, each linking to its page;
// the filters narrow it; a row inserted while the page is open appears
// without a reload.
func TestBrowserListFiltersAndLiveRefresh(t *testing.T) {
	bd := setup(t)
	mailFailed := bd.insert(t, "send_email", "failed", `{}`)
	mailPending := bd.insert(t, "send_email", "pending", `{}`)
	hookFailed := bd.insert(t, "webhook", "failed", `{}`)
	hookDone := bd.insert(t, "webhook", "succeeded", `{}`)
	br := newBrowser(t)
	br.login(bd.srv.URL, testToken, "alice")

	if got := br.shownIDs(); !sameSet(got, []string{mailFailed, mailPending, hookFailed, hookDone}) {
		t.Fatalf("the list shows %v", got)
	}
	if href := eval[string](br, `document.querySelector("table.effects td.id a").href`); !strings.HasSuffix(href, "/effects/"+br.shownIDs()[0]) {
		t.Errorf("a row links to %s", href)
	}
	if name := br.text("header .name"); name != "alice" {
		t.Errorf("header shows %q, want the name given at login", name)
	}

	br.do(chromedp.SetValue(chromedp.CSS("#status-filter"), "failed"))
	br.submit("#filter")
	if got := br.shownIDs(); !sameSet(got, []string{mailFailed, hookFailed}) || !strings.Contains(br.location(), "status=failed") {
		t.Errorf("status=failed shows %v at %s", got, br.location())
	}
	br.do(chromedp.SendKeys(chromedp.CSS("#kind-filter"), "send_email"))
	br.submit("#filter")
	if got := br.shownIDs(); !sameSet(got, []string{mailFailed}) || !strings.Contains(br.location(), "kind=send_email") {
		t.Errorf("status=failed&kind=send_email shows %v at %s", got, br.location())
	}
	if n := br.text("#failed-count"); n != "1" {
		t.Errorf("failed count %q, want 1", n)
	}

	// Live: a new failed send_email row appears, the page is not reloaded.
	br.do(chromedp.Evaluate[chromedp.Void](`window.__same = 1`))
	fresh := bd.insert(t, "send_email", "failed", `{}`)
	bd.insert(t, "webhook", "failed", `{}`) // not for this filter
	br.waitJS("the new row", fmt.Sprintf(`!!document.querySelector('tr[data-id=%q]')`, fresh))
	if got := br.shownIDs(); !sameSet(got, []string{mailFailed, fresh}) || eval[int](br, `window.__same || 0`) != 1 {
		t.Errorf("after the refresh: %v (reloaded: %v)", got, eval[int](br, `window.__same || 0`) != 1)
	}
	br.waitJS("the failed count", `document.querySelector("#failed-count").textContent === "2"`)
	if live := br.text("#live"); !strings.Contains(live, "updated") {
		t.Errorf("the live indicator says %q", live)
	}
	br.noProblems()
}

// Without a token the browser sees the login page and nothing else, and
// the refreshes a page would make are refused.
func TestBrowserWithoutToken(t *testing.T) {
	bd := setup(t)
	id := bd.insert(t, "send_email", "failed", `{"to":"secret@example.com"}`)
	br := newBrowser(t)
	for _, path := range []string{"/", "/effects/" + id, "/kinds", "/?status=failed"} {
		br.open(bd.srv.URL + path)
		if loc := br.location(); !strings.HasPrefix(loc, bd.srv.URL+"/login") {
			t.Errorf("%s: at %s, want the login page", path, loc)
		}
		if body := br.text("body"); strings.Contains(body, "send_email") || strings.Contains(body, "secret@example.com") || strings.Contains(body, id) {
			t.Errorf("%s shows data without a token:\n%s", path, body)
		}
	}
	if code := eval[int](br, `fetch("/?fragment=1").then(r => r.status)`); code != http.StatusUnauthorized {
		t.Errorf("a refresh without a session: %d, want 401", code)
	}
	// A wrong token is refused on the page.
	br.do(chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token-0123456789"))
	br.submit("#login")
	if !strings.Contains(br.text(".flash.error"), "not valid") || strings.Contains(br.text("body"), "send_email") {
		t.Errorf("after a wrong token:\n%s", br.text("body"))
	}
	br.expectFailedLoads(http.StatusUnauthorized)
}

// Retry on a failed effect's page re-runs it for real: the dispatcher runs
// the handler, the completer writes succeeded, and the page shows it
// without a reload. Dismissing the confirmation does nothing.
func TestBrowserRetry(t *testing.T) {
	bd := setup(t)
	reg := effectsRegistry(t, "flaky")
	bd.runPipeline(t, reg.Registry)
	id := bd.insert(t, "flaky", "failed", `{"n":1}`)
	other := bd.insert(t, "flaky", "failed", `{"n":2}`)
	br := newBrowser(t)
	br.login(bd.srv.URL, testToken, "alice")

	// Dismissed: nothing happens.
	br.open(bd.srv.URL + "/effects/" + other)
	br.setAccept(false)
	br.do(chromedp.Click(chromedp.CSS("#retry")))
	testenv.WaitFor(t, 10*time.Second, "a confirmation naming the effect", func() bool { return strings.Contains(br.lastDialog(), other) })
	br.setAccept(true)
	if _, asked := bd.rerunBy(t, other); asked || bd.published(t) != 0 {
		t.Fatalf("a dismissed Retry re-ran the effect")
	}

	br.open(bd.srv.URL + "/effects/" + id)
	if got := br.text("#status"); got != "failed" {
		t.Fatalf("status %q, want failed", got)
	}
	br.submit("#retry")
	if d := br.lastDialog(); !strings.Contains(d, id) {
		t.Errorf("the confirmation said %q, want the effect's id", d)
	}
	if f := br.text("#flash"); !strings.Contains(f, "Re-run asked") {
		t.Errorf("flash %q", f)
	}
	br.waitJS("succeeded on the page", `document.querySelector("#status").textContent === "succeeded"`)
	if s := bd.status(t, id); s != "succeeded" {
		t.Errorf("row %s", s)
	}
	if by, _ := bd.rerunBy(t, id); by != "alice (console)" {
		t.Errorf("re-run recorded as asked by %q", by)
	}
	if n := reg.calls(id); n != 1 {
		t.Errorf("the handler ran %d times for the effect, want 1", n)
	}
	if br.count("#retry") != 0 {
		t.Errorf("a succeeded effect still offers Retry")
	}
	br.noProblems()
}

// "Retry all failed" re-runs the failed effects of the filter's kind, and
// only those.
func TestBrowserRetryAllFailed(t *testing.T) {
	bd := setup(t)
	reg := effectsRegistry(t, "flaky")
	bd.runPipeline(t, reg.Registry)
	var ids []string
	for i := range 3 {
		ids = append(ids, bd.insert(t, "flaky", "failed", fmt.Sprintf(`{"n":%d}`, i)))
	}
	otherKind := bd.insert(t, "webhook", "failed", `{}`)
	br := newBrowser(t)
	br.login(bd.srv.URL, testToken, "")
	br.open(bd.srv.URL + "/?status=failed&kind=flaky")
	if got := br.shownIDs(); !sameSet(got, ids) {
		t.Fatalf("the list shows %v", got)
	}
	br.submit("#retry-all")
	if d := br.lastDialog(); !strings.Contains(d, "of kind flaky") {
		t.Errorf("the confirmation said %q", d)
	}
	if f := br.text("#flash"); !strings.Contains(f, "Re-ran 3 failed effects of kind flaky.") {
		t.Errorf("flash %q", f)
	}
	for _, id := range ids {
		bd.waitStatus(t, id, "succeeded")
	}
	br.waitJS("the list emptied", `document.querySelectorAll("table.effects td.id").length === 0`)
	if _, asked := bd.rerunBy(t, otherKind); asked || bd.status(t, otherKind) != "failed" {
		t.Errorf("the webhook row was re-run")
	}
	if by, _ := bd.rerunBy(t, ids[0]); by != "console" {
		t.Errorf("recorded as asked by %q", by)
	}
	br.noProblems()
}

// The read-only token sees the pages without buttons, and the server
// refuses an action posted from the page anyway.
func TestBrowserReadOnly(t *testing.T) {
	bd := setup(t)
	id := bd.insert(t, "send_email", "failed", `{}`)
	br := newBrowser(t)
	br.login(bd.srv.URL, testReadOnly, "")
	if got := br.shownIDs(); !sameSet(got, []string{id}) {
		t.Fatalf("the list shows %v", got)
	}
	if br.count("#retry-all") != 0 || br.text(".badge.readonly") != "read-only" {
		t.Errorf("read-only list: %d retry-all buttons, badge %q", br.count("#retry-all"), br.text(".badge.readonly"))
	}
	br.open(bd.srv.URL + "/effects/" + id)
	if br.count("#retry") != 0 || !strings.Contains(br.text("#error"), "downstream said no") {
		t.Errorf("read-only effect page: %d Retry buttons\n%s", br.count("#retry"), br.text("body"))
	}
	code := eval[int](br, fmt.Sprintf(`fetch("/effects/%s/retry", {method: "POST"}).then(r => r.status)`, id))
	if code != http.StatusForbidden {
		t.Errorf("a read-only POST from the page: %d, want 403", code)
	}
	if _, asked := bd.rerunBy(t, id); asked || bd.published(t) != 0 {
		t.Errorf("the read-only session changed something")
	}
	br.expectFailedLoads(http.StatusForbidden)
}

// A page of another site that posts to the console, in the browser of a
// logged-in operator, is refused.
func TestBrowserCrossSitePostRefused(t *testing.T) {
	bd := setup(t)
	id := bd.insert(t, "send_email", "failed", `{}`)
	br := newBrowser(t)
	br.login(bd.srv.URL, testToken, "")
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<form method="post" action="%s/effects/%s/retry"></form><script>document.forms[0].submit()</script>`, bd.srv.URL, id)
	}))
	t.Cleanup(evil.Close)
	// localhost is another site than 127.0.0.1 (the console's address).
	br.do(chromedp.Navigate(strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)))
	br.waitJS("the forged post's answer", `location.pathname.endsWith("/retry") && document.readyState === "complete"`)
	if body := br.text("body"); !strings.Contains(body, "cross-origin request refused") {
		t.Errorf("the forged post was answered:\n%s", body)
	}
	if _, asked := bd.rerunBy(t, id); asked || bd.published(t) != 0 {
		t.Errorf("the forged post re-ran the effect")
	}
	br.expectFailedLoads(http.StatusForbidden)
}

// /kinds draws the last hour's completions, and follows new ones without
// a reload.
func TestBrowserKindsChart(t *testing.T) {
	bd := setup(t)
	bd.insert(t, "send_email", "pending", `{}`)
	bd.insert(t, "send_email", "failed", `{}`)
	for range 4 {
		publishCompletion(t, bd.js, "send_email", "succeeded")
	}
	publishCompletion(t, bd.js, "webhook", "failed")
	br := newBrowser(t)
	br.login(bd.srv.URL, testToken, "")
	br.open(bd.srv.URL + "/kinds")
	br.waitJS("the hour read", `document.querySelector("#hour-succeeded").textContent === "4" && document.querySelector("#hour-failed").textContent === "1"`)
	if n := br.count(`section.card svg.chart rect.succeeded`); n == 0 {
		t.Errorf("no bars in the chart")
	}
	if n := br.count(`tr[data-kind="send_email"] svg.chart`); n != 1 {
		t.Errorf("%d sparklines for send_email, want 1", n)
	}
	row := br.text(`tr[data-kind="send_email"]`)
	if !strings.Contains(row, "4 ok") || !strings.Contains(row, "no consumer") {
		t.Errorf("send_email row: %q", row)
	}
	br.do(chromedp.Evaluate[chromedp.Void](`window.__same = 1`))
	publishCompletion(t, bd.js, "send_email", "failed")
	br.waitJS("the new completion", `document.querySelector("#hour-failed").textContent === "2" && window.__same === 1`)
	br.noProblems()
}

// TestScreenshots renders each page with a realistic table in the browser
// (and checks that none reports a problem); with -screenshots=DIR it writes
// them for the docs (make console-screenshots).
func TestScreenshots(t *testing.T) {
	bd := setup(t)
	reg := effectsRegistry(t, "send_email", "resize_image", "webhook")
	bd.runPipeline(t, reg.Registry)
	var failed string
	for i := range 12 {
		bd.insert(t, "send_email", "succeeded", fmt.Sprintf(`{"to":"user%d@example.com","template":"welcome"}`, i))
	}
	for i := range 4 {
		bd.insert(t, "resize_image", "pending", fmt.Sprintf(`{"key":"uploads/%d.png","width":640}`, i))
	}
	for i := range 3 {
		failed = bd.insert(t, "webhook", "failed", fmt.Sprintf(`{"url":"https://hooks.example.com/orders/%d","event":"order.paid"}`, i))
	}
	if _, err := bd.pg.Pool.Exec(t.Context(), `UPDATE effects SET error = 'http_request: POST https://hooks.example.com/orders/2: 503 Service Unavailable', attempts = 5
		WHERE status = 'failed'`); err != nil {
		t.Fatal(err)
	}
	cancelled := bd.insert(t, "resize_image", "pending", `{"key":"uploads/old.png","width":640}`)
	if _, err := bd.h.control.Cancel(t.Context(), []string{cancelled}, "bob (console)"); err != nil {
		t.Fatal(err)
	}
	if _, err := bd.h.control.Pause(t.Context(), []string{"resize_image"}, "bob (console)"); err != nil {
		t.Fatal(err)
	}
	// The chart's hour, staged: minutes of a steady load with a burst of
	// failures, as the reader would have counted them from the stream.
	bd.h.activity.mu.Lock()
	bd.h.activity.caughtUp = true
	bd.h.activity.lastAsked = time.Now()
	now := time.Now().Unix() / 60
	bd.h.activity.counts = map[string]map[int64]*minuteCount{"send_email": {}, "webhook": {}, "resize_image": {}}
	for m := int64(0); m < chartMinutes; m++ {
		bd.h.activity.counts["send_email"][now-m] = &minuteCount{Succeeded: 180 + int((m*37)%60)}
		bd.h.activity.counts["resize_image"][now-m] = &minuteCount{Succeeded: 40 + int((m*13)%25)}
		w := &minuteCount{Succeeded: 25 + int((m*7)%10)}
		if m >= 8 && m < 14 {
			w.Failed = 20 + int(m%4)*6
		}
		bd.h.activity.counts["webhook"][now-m] = w
	}
	bd.h.activity.running = true // staged: no reader replaces the counts
	bd.h.activity.mu.Unlock()
	t.Cleanup(func() {
		bd.h.activity.mu.Lock()
		bd.h.activity.running = false
		bd.h.activity.mu.Unlock()
	})

	br := newBrowser(t)
	shoot := func(name string) {
		t.Helper()
		br.waitJS("fonts", `document.fonts.status === "loaded"`)
		if *screenshots == "" {
			return
		}
		ctx, cancel := context.WithTimeout(br.ctx, 30*time.Second)
		defer cancel()
		img, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(*screenshots, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(*screenshots, name+".png"), img, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	br.open(bd.srv.URL + "/login")
	shoot("login")
	br.login(bd.srv.URL, testToken, "alice")
	br.waitJS("the rows", `document.querySelectorAll("table.effects tbody tr[data-id]").length === 20`)
	shoot("list")
	br.open(bd.srv.URL + "/effects/" + failed)
	shoot("effect")
	br.open(bd.srv.URL + "/kinds")
	br.waitJS("the chart", `document.querySelectorAll("section.card svg.chart rect").length > 60`)
	shoot("kinds")
	br.noProblems()
}
