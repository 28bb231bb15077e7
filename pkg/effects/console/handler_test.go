package console

import (
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

var asPage = map[string]string{"Accept": "text/html,application/xhtml+xml"}

// Without a token nothing is seen: a browser is sent to the login page,
// anything else gets 401, a wrong token is not a fallback to anything.
// The static files (no data in them) are the exception.
func TestNoTokenSeesNothing(t *testing.T) {
	b := setup(t)
	id := b.insert(t, "send_email", "failed", `{"to":"someone@example.com"}`)
	for _, path := range []string{"/", "/?status=failed", "/effects/" + id, "/kinds", "/nope"} {
		resp, body := b.request(t, "GET", path, "", nil, asPage)
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login?next=") {
			t.Errorf("GET %s from a browser without a token: %d, Location %q; want 303 to the login page", path, resp.StatusCode, resp.Header.Get("Location"))
		}
		if strings.Contains(body, "send_email") || strings.Contains(body, "downstream said no") {
			t.Errorf("GET %s without a token shows the data:\n%s", path, body)
		}
		for _, token := range []string{"", "wrong-token-0123456789abcdef", testToken + "x"} {
			resp, body = b.request(t, "GET", path+"?fragment=1", token, nil, nil)
			if resp.StatusCode != http.StatusUnauthorized || strings.Contains(body, id) || strings.Contains(body, "send_email") {
				t.Errorf("GET %s?fragment=1 with token %q: %d; want 401 and nothing shown\n%s", path, token, resp.StatusCode, body)
			}
		}
	}
	resp, _ := b.request(t, "GET", "/", "", nil, map[string]string{"Authorization": "Basic " + testToken})
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a Basic authorization: %d, want 401", resp.StatusCode)
	}
	published := b.published(t)
	resp, _ = b.request(t, "POST", "/effects/"+id+"/retry", "", url.Values{}, nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST retry without a token: %d, want 401", resp.StatusCode)
	}
	if _, asked := b.rerunBy(t, id); asked || b.published(t) != published {
		t.Errorf("a retry without a token changed something")
	}
	if resp, body := b.request(t, "GET", "/static/console.css", "", nil, nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, "body") {
		t.Errorf("static file without a token: %d", resp.StatusCode)
	}
	if resp, body := b.request(t, "GET", "/login", "", nil, asPage); resp.StatusCode != http.StatusOK || !strings.Contains(body, `name="token"`) {
		t.Errorf("login page: %d\n%s", resp.StatusCode, body)
	}
}

// A login with the token sets a session cookie (HttpOnly, SameSite=Strict,
// the console's path) that stands for the token; a forged, altered or
// expired one stands for nothing; logging out clears it.
func TestLoginSession(t *testing.T) {
	b := setup(t)
	id := b.insert(t, "send_email", "failed", `{}`)

	resp, body := b.request(t, "POST", "/login", "", url.Values{"token": {"not-the-token-0123456789"}}, nil)
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 || !strings.Contains(body, "not valid") {
		t.Errorf("wrong token: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	resp, _ = b.request(t, "POST", "/login", "", url.Values{"token": {testToken}, "name": {" alice\x00 <b> "}, "next": {"/effects/" + id}}, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/effects/"+id {
		t.Fatalf("login: %d to %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	var session *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			session = c
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Path != "/" ||
		strings.Contains(session.Value, testToken) {
		t.Fatalf("session cookie %+v", session)
	}
	withCookie := func(v string) (int, string) {
		resp, body := b.request(t, "GET", "/effects/"+id, "", nil, map[string]string{"Cookie": sessionCookie + "=" + v, "Accept": "text/html"})
		return resp.StatusCode, body
	}
	if code, body := withCookie(session.Value); code != http.StatusOK || !strings.Contains(body, id) ||
		!strings.Contains(body, "alice &lt;b&gt;") || !strings.Contains(body, ">Retry</button>") {
		t.Errorf("with the session: %d\n%s", code, body)
	}
	payload, sig, _ := cutLast(session.Value, ".")
	forged := strings.Replace(payload, "2.", "2.9", 1) + "." + sig // a later expiry, same MAC
	for name, v := range map[string]string{"altered": forged, "garbage": "x.y.z", "empty": "", "unsigned": payload} {
		if code, body := withCookie(v); code != http.StatusSeeOther || strings.Contains(body, "downstream said no") {
			t.Errorf("%s cookie: %d", name, code)
		}
	}
	// Signed by the read-only token's key, it is a read-only session.
	ro := b.h.auth.session(roleReadOnly, "")
	if code, body := withCookie(ro); code != http.StatusOK || strings.Contains(body, ">Retry</button>") || !strings.Contains(body, "read-only") {
		t.Errorf("read-only session: %d", code)
	}
	// Expired.
	b.h.auth.now = func() time.Time { return time.Now().Add(sessionTTL + time.Minute) }
	if code, _ := withCookie(session.Value); code != http.StatusSeeOther {
		t.Errorf("expired session: %d, want 303 to the login page", code)
	}
	b.h.auth.now = time.Now

	resp, _ = b.request(t, "POST", "/logout", "", url.Values{}, map[string]string{"Cookie": sessionCookie + "=" + session.Value})
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || resp.Cookies()[0].MaxAge >= 0 {
		t.Errorf("logout: %d, cookies %+v", resp.StatusCode, resp.Cookies())
	}

	// After a login, only the console's own pages: never another site.
	for next, want := range map[string]string{"//evil.example/": "/", "https://evil.example/": "/", "/kinds": "/kinds", "/\\evil": "/"} {
		resp, _ := b.request(t, "POST", "/login", "", url.Values{"token": {testToken}, "next": {next}}, nil)
		if got := resp.Header.Get("Location"); got != want {
			t.Errorf("next %q: redirected to %q, want %q", next, got, want)
		}
	}
}

// The read-only token sees everything and can change nothing: no buttons,
// and the server refuses the actions with 403.
func TestReadOnlyCannotAct(t *testing.T) {
	b := setup(t)
	id := b.insert(t, "send_email", "failed", `{}`)
	resp, body := b.request(t, "GET", "/", testReadOnly, nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, id) || strings.Contains(body, "Retry all failed") {
		t.Errorf("list for read-only: %d\n%s", resp.StatusCode, body)
	}
	resp, body = b.request(t, "GET", "/effects/"+id, testReadOnly, nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "downstream said no") || strings.Contains(body, ">Retry</button>") {
		t.Errorf("effect page for read-only: %d\n%s", resp.StatusCode, body)
	}
	for _, path := range []string{"/effects/" + id + "/retry", "/retry-failed"} {
		resp, _ := b.request(t, "POST", path, testReadOnly, url.Values{}, nil)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("POST %s read-only: %d, want 403", path, resp.StatusCode)
		}
	}
	if _, asked := b.rerunBy(t, id); asked || b.published(t) != 0 {
		t.Errorf("a read-only token changed something")
	}
	// The operator's token shows the buttons.
	if _, body := b.request(t, "GET", "/effects/"+id, testToken, nil, nil); !strings.Contains(body, ">Retry</button>") {
		t.Errorf("no Retry button for the operator:\n%s", body)
	}
}

// Nothing changes state by GET, and a state change from another origin is
// refused even with a valid session or token.
func TestStateChangesArePostsFromTheConsole(t *testing.T) {
	b := setup(t)
	id := b.insert(t, "send_email", "failed", `{}`)
	for _, path := range []string{"/effects/" + id + "/retry", "/retry-failed?kind=send_email", "/logout"} {
		resp, _ := b.request(t, "GET", path, testToken, nil, nil)
		if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 405 or 404", path, resp.StatusCode)
		}
	}
	for name, hdr := range map[string]map[string]string{
		"cross-site":          {"Sec-Fetch-Site": "cross-site"},
		"same-site":           {"Sec-Fetch-Site": "same-site"},
		"another origin":      {"Origin": "http://evil.example"},
		"another port, login": {"Origin": "http://127.0.0.1:1"},
	} {
		resp, body := b.request(t, "POST", "/effects/"+id+"/retry", testToken, url.Values{}, hdr)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "cross-origin") {
			t.Errorf("%s POST: %d %q, want 403", name, resp.StatusCode, body)
		}
		resp, _ = b.request(t, "POST", "/login", "", url.Values{"token": {testToken}}, hdr)
		if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
			t.Errorf("%s login: %d, want 403 (login CSRF)", name, resp.StatusCode)
		}
	}
	if _, asked := b.rerunBy(t, id); asked || b.published(t) != 0 {
		t.Fatalf("a refused request changed something")
	}
	// The console's own page posting: same origin.
	resp, _ := b.request(t, "POST", "/effects/"+id+"/retry", testToken, url.Values{},
		map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": b.srv.URL})
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("same-origin POST: %d, want 303", resp.StatusCode)
	}
	if by, asked := b.rerunBy(t, id); !asked || by != "console" || b.published(t) != 1 {
		t.Errorf("same-origin retry: asked %v by %q, %d published", asked, by, b.published(t))
	}
}

// Hostile content in a row renders as text: html/template escapes it and
// the page's policy allows no inline script anyway.
func TestHostileContentIsText(t *testing.T) {
	b := setup(t)
	evil := `<script>alert(1)</script><img src=x onerror=alert(2)>`
	id := b.insert(t, "send_email", "failed", `{"to":"`+strings.ReplaceAll(evil, `"`, `\"`)+`"}`)
	if _, err := b.pg.Pool.Exec(t.Context(), `UPDATE effects SET error = $2, completion = $3 WHERE id = $1`, id, evil, `{"html":"`+evil+`"}`); err != nil {
		t.Fatal(err)
	}
	badKind := b.insert(t, `"><script>alert(3)</script>`, "failed", `{}`)
	for _, path := range []string{"/", "/effects/" + id, "/effects/" + badKind, "/kinds", "/?status=" + url.QueryEscape(evil)} {
		resp, body := b.request(t, "GET", path, testToken, nil, nil)
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "<img src=x") {
			t.Errorf("GET %s (%d) carries the markup unescaped:\n%s", path, resp.StatusCode, body)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("GET %s: policy %q", path, csp)
		}
	}
	if _, body := b.request(t, "GET", "/effects/"+id, testToken, nil, nil); !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("the payload is not shown as text:\n%s", body)
	}
}

// The list's filters, its bad values, and the fragment the live refresh
// fetches.
func TestListFilters(t *testing.T) {
	b := setup(t)
	mailFailed := b.insert(t, "send_email", "failed", `{}`)
	mailPending := b.insert(t, "send_email", "pending", `{}`)
	hookFailed := b.insert(t, "webhook", "failed", `{}`)
	hookDone := b.insert(t, "webhook", "succeeded", `{}`)
	all := []string{mailFailed, mailPending, hookFailed, hookDone}
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", all},
		{"?status=failed", []string{mailFailed, hookFailed}},
		{"?status=failed&kind=send_email", []string{mailFailed}},
		{"?kind=webhook", []string{hookFailed, hookDone}},
		{"?status=succeeded&kind=send_email", nil},
	} {
		for _, fragment := range []string{"", "&fragment=1"} {
			q := tc.query + fragment
			if tc.query == "" && fragment != "" {
				q = "?fragment=1"
			}
			resp, body := b.request(t, "GET", "/"+q, testToken, nil, nil)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /%s: %d", q, resp.StatusCode)
			}
			if fragment != "" && strings.Contains(body, "<html") {
				t.Errorf("GET /%s: the fragment is a whole page", q)
			}
			for _, id := range all {
				want := false
				for _, w := range tc.want {
					want = want || w == id
				}
				if got := strings.Contains(body, `href="/effects/`+id+`">`+id+`</a>`); got != want {
					t.Errorf("GET /%s: row %s shown %v, want %v", q, id, got, want)
				}
			}
		}
	}
	for q, want := range map[string]string{"?status=done": "want pending, succeeded, failed or cancelled", "?kind=a.b": "invalid kind",
		"?limit=0": "want 1 to 500", "?limit=x": "want 1 to 500"} {
		if resp, body := b.request(t, "GET", "/"+q, testToken, nil, nil); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("GET /%s: %d, want 400 with %q\n%s", q, resp.StatusCode, want, body)
		}
	}
	if resp, _ := b.request(t, "GET", "/effects/nope", testToken, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a bad id: %d, want 404", resp.StatusCode)
	}
	if resp, _ := b.request(t, "GET", "/effects/00000000-0000-4000-8000-000000000000", testToken, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("an unknown id: %d, want 404", resp.StatusCode)
	}
}

// Without tokens the console answers only requests addressed to a loopback
// name (DNS rebinding); New refuses to run without tokens unless told.
func TestOpenConsoleAnswersLoopbackOnly(t *testing.T) {
	b := setup(t, func(c *Config) { c.Token, c.ReadOnlyToken, c.AllowUnauthenticated = "", "", true })
	id := b.insert(t, "send_email", "failed", `{}`)
	if resp, body := b.request(t, "GET", "/effects/"+id, "", nil, asPage); resp.StatusCode != http.StatusOK || !strings.Contains(body, ">Retry</button>") {
		t.Errorf("open console on 127.0.0.1: %d", resp.StatusCode)
	}
	for _, host := range []string{"evil.example", "evil.example:80", "10.0.0.1"} {
		req, _ := http.NewRequest("GET", b.srv.URL+"/effects/"+id, nil)
		req.Host = host
		resp, err := b.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("Host %s: %d, want 403", host, resp.StatusCode)
		}
	}
	for _, host := range []string{"localhost:8090", "[::1]:8090", "127.0.0.2"} {
		req, _ := http.NewRequest("GET", b.srv.URL+"/", nil)
		req.Host = host
		resp, err := b.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("Host %s: %d, want 200", host, resp.StatusCode)
		}
	}
}

func TestNewRefusesBadSettings(t *testing.T) {
	b := setup(t)
	base := Config{DB: b.pg.Pool, NATS: b.nc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tc := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) {}, "no EFFECTS_UI_TOKEN"},
		{func(c *Config) { c.Token = "short" }, "EFFECTS_UI_TOKEN is 5 characters: want at least 16"},
		{func(c *Config) { c.ReadOnlyToken = testReadOnly }, "EFFECTS_UI_READONLY_TOKEN is set without EFFECTS_UI_TOKEN"},
		{func(c *Config) { c.Token, c.ReadOnlyToken = testToken, testToken }, "must differ"},
		{func(c *Config) { c.Token, c.ReadOnlyToken = testToken, "short" }, "EFFECTS_UI_READONLY_TOKEN is 5 characters"},
		{func(c *Config) { c.Token, c.Prefix = testToken, "effects" }, "Config.Prefix"},
		{func(c *Config) { c.Token, c.Refresh = testToken, time.Millisecond }, "Config.Refresh"},
		{func(c *Config) { c.Token, c.Table = testToken, "a.b.c" }, "Config.Table"},
		{func(c *Config) { c.Token, c.DB = testToken, nil }, "Config.DB"},
		{func(c *Config) { c.Token, c.TrustedOrigins = testToken, []string{"not an origin"} }, "TrustedOrigins"},
	} {
		cfg := base
		tc.change(&cfg)
		h, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", cfg, err, tc.want)
		}
		if h != nil {
			h.Close()
		}
	}
}

// Mounted under a prefix, the console serves only below it and writes its
// links and cookies with it.
func TestMountedUnderAPrefix(t *testing.T) {
	b := setup(t, func(c *Config) { c.Prefix = "/ops/effects/" })
	id := b.insert(t, "send_email", "failed", `{}`)
	resp, body := b.request(t, "GET", "/ops/effects/", testToken, nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `href="/ops/effects/effects/`+id+`"`) ||
		!strings.Contains(body, `action="/ops/effects/retry-failed"`) || !strings.Contains(body, `/ops/effects/static/console.js`) {
		t.Errorf("under a prefix: %d\n%s", resp.StatusCode, body)
	}
	if resp, _ := b.request(t, "GET", "/", testToken, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("outside the prefix: %d, want 404", resp.StatusCode)
	}
	if resp, _ := b.request(t, "GET", "/ops/effects/static/console.css", "", nil, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("static under the prefix: %d", resp.StatusCode)
	}
	resp, _ = b.request(t, "POST", "/ops/effects/login", "", url.Values{"token": {testToken}}, nil)
	if c := resp.Cookies(); len(c) != 1 || c[0].Path != "/ops/effects/" || resp.Header.Get("Location") != "/ops/effects/" {
		t.Errorf("login under a prefix: cookies %+v, to %q", c, resp.Header.Get("Location"))
	}
}

// Keyed effects: the effect's page shows its key and, pending, whether the
// table source's cursor passed it; "retry all failed" re-runs one failed
// effect of a key, and none of a key a pending effect holds (as `effects
// retry --status failed` does: one effect of a key runs at a time).
func TestKeysOnTheEffectPageAndInRetryAll(t *testing.T) {
	b := setup(t)
	ctx := t.Context()
	keyed := func(key, status string) string {
		id := b.insert(t, "sync", status, `{}`)
		if _, err := b.pg.Pool.Exec(ctx, `UPDATE effects SET key = $2 WHERE id = $1`, id, key); err != nil {
			t.Fatal(err)
		}
		return id
	}
	heldFailed := keyed("customer:42", "failed")
	holder := keyed("customer:42", "pending")
	twiceA, twiceB := keyed("customer:43", "failed"), keyed("customer:43", "failed")

	_, body := b.request(t, "GET", "/effects/"+holder, testToken, nil, nil)
	if !strings.Contains(body, `id="key">customer:42<`) || strings.Contains(body, `id="table-source"`) {
		t.Errorf("the pending keyed effect's page (no table source ran):\n%s", body)
	}
	// The cursor as a table source leaves it once past the holder.
	if _, err := b.pg.Pool.Exec(ctx, `INSERT INTO effects_cursor (name, base) VALUES ('table_source', pg_current_snapshot())`); err != nil {
		t.Fatal(err)
	}
	if _, body := b.request(t, "GET", "/effects/"+holder, testToken, nil, nil); !strings.Contains(body, `id="table-source">published`) {
		t.Errorf("the table source's state is not shown:\n%s", body)
	}

	resp, _ := b.request(t, "POST", "/retry-failed", testToken, url.Values{"kind": {"sync"}},
		map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": b.srv.URL})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("retry all failed: %d", resp.StatusCode)
	}
	if _, asked := b.rerunBy(t, heldFailed); asked {
		t.Error("a failed effect whose key a pending effect holds was re-run")
	}
	_, a := b.rerunBy(t, twiceA)
	_, bb := b.rerunBy(t, twiceB)
	if !a || bb || b.published(t) != 1 {
		t.Errorf("two failed effects of one key: re-run %v and %v, %d published; want the first alone", a, bb, b.published(t))
	}
}
