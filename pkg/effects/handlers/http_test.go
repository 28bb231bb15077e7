package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

const testEffectID = "0b6e3f4e-8d3c-4f57-9c1e-2f1b9b7f0a11"

// received is what a test server saw of one request.
type received struct {
	method string
	header http.Header
	body   string
}

// testServer starts a real HTTP server whose requests are recorded on the
// returned channel and answered by reply.
func testServer(t *testing.T, reply http.HandlerFunc) (*httptest.Server, <-chan received) {
	t.Helper()
	got := make(chan received, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- received{method: r.Method, header: r.Header.Clone(), body: string(body)}
		reply(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

// newHTTPHandler builds the handler; allow defaults to loopback on any port,
// where every test server listens.
func newHTTPHandler(t *testing.T, cfg HTTPConfig) effects.HandlerFunc {
	t.Helper()
	if cfg.Allow == nil {
		cfg.Allow = []string{"127.0.0.1"}
	}
	h, err := NewHTTPRequest(cfg)
	if err != nil {
		t.Fatalf("NewHTTPRequest: %v", err)
	}
	return h
}

func httpEffect(t *testing.T, payload map[string]any) effects.Effect {
	t.Helper()
	raw, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	return effects.Effect{ID: testEffectID, Kind: KindHTTPRequest, Payload: raw}
}

// completion returns the completion JSON as the dispatcher would publish it.
func completion(t *testing.T, result any) string {
	t.Helper()
	raw, err := effects.MarshalResult(result)
	if err != nil {
		t.Fatalf("MarshalResult: %v", err)
	}
	return string(raw)
}

// mustFail checks that err is a failure of the given kind.
func mustFail(t *testing.T, err error, permanent bool, contains ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("handler succeeded, want an error")
	}
	if got := effects.IsPermanent(err); got != permanent {
		t.Errorf("IsPermanent = %v, want %v (err: %v)", got, permanent, err)
	}
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func TestHTTPRequestSuccessJSON(t *testing.T) {
	t.Parallel()
	srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"ok": true, "n": [1, 2]}`)
	})
	h := newHTTPHandler(t, HTTPConfig{})

	out, err := h(t.Context(), httpEffect(t, map[string]any{"url": srv.URL + "/things"}))
	if err != nil {
		t.Fatalf("handler: %v", err)
	}
	if got, want := completion(t, out), `{"status":201,"body":{"ok":true,"n":[1,2]}}`; got != want {
		t.Errorf("completion = %s, want %s", got, want)
	}
}

func TestHTTPRequestSuccessNotJSON(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body, want string
	}{
		{"text", "hello <world>\n", `{"status":200,"body":"hello <world>\n"}`},
		{"empty", "", `{"status":200,"body":""}`},
		{"invalid UTF-8", "a\xffb", `{"status":200,"body":"a\ufffdb"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/plain")
				io.WriteString(w, tc.body)
			})
			h := newHTTPHandler(t, HTTPConfig{})
			out, err := h(t.Context(), httpEffect(t, map[string]any{"url": srv.URL}))
			if err != nil {
				t.Fatalf("handler: %v", err)
			}
			if got := completion(t, out); got != tc.want {
				t.Errorf("completion = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestHTTPRequestDefaultsToPOSTWithoutBody(t *testing.T) {
	t.Parallel()
	srv, got := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	h := newHTTPHandler(t, HTTPConfig{})

	if _, err := h(t.Context(), httpEffect(t, map[string]any{"url": srv.URL})); err != nil {
		t.Fatalf("handler: %v", err)
	}
	r := <-got
	if r.method != http.MethodPost {
		t.Errorf("method = %q, want POST", r.method)
	}
	if r.body != "" {
		t.Errorf("body = %q, want none", r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "" {
		t.Errorf("Content-Type = %q, want none without a body", ct)
	}
	if id := r.header.Get("X-Effect-Id"); id != testEffectID {
		t.Errorf("X-Effect-Id = %q, want %q", id, testEffectID)
	}
	if ua := r.header.Get("User-Agent"); ua != userAgent {
		t.Errorf("User-Agent = %q, want %q", ua, userAgent)
	}
}

func TestHTTPRequestSendsMethodHeadersAndJSONBody(t *testing.T) {
	t.Parallel()
	srv, got := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	h := newHTTPHandler(t, HTTPConfig{})

	_, err := h(t.Context(), effects.Effect{ID: testEffectID, Kind: KindHTTPRequest, Payload: json.RawMessage(`{
		"url": "` + srv.URL + `/rates?x=1",
		"method": "put",
		"headers": {"Authorization": "Bearer s3cret", "x-trace": "abc"},
		"body": {"rate": 1.25, "pairs": ["EURUSD"]}
	}`)})
	if err != nil {
		t.Fatalf("handler: %v", err)
	}
	r := <-got
	if r.method != http.MethodPut {
		t.Errorf("method = %q, want PUT", r.method)
	}
	if v := r.header.Get("Authorization"); v != "Bearer s3cret" {
		t.Errorf("Authorization = %q", v)
	}
	if v := r.header.Get("X-Trace"); v != "abc" {
		t.Errorf("X-Trace = %q", v)
	}
	if v := r.header.Get("Content-Type"); v != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", v)
	}
	if want := `{"rate": 1.25, "pairs": ["EURUSD"]}`; r.body != want {
		t.Errorf("body = %q, want %q", r.body, want)
	}
}

func TestHTTPRequestContentTypeFromHeaders(t *testing.T) {
	t.Parallel()
	srv, got := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	h := newHTTPHandler(t, HTTPConfig{})

	_, err := h(t.Context(), httpEffect(t, map[string]any{
		"url":     srv.URL,
		"headers": map[string]string{"content-type": "application/vnd.api+json", "X-Effect-Id": "mine"},
		"body":    []int{1, 2},
	}))
	if err != nil {
		t.Fatalf("handler: %v", err)
	}
	r := <-got
	if v := r.header.Get("Content-Type"); v != "application/vnd.api+json" {
		t.Errorf("Content-Type = %q, want the payload's", v)
	}
	if v := r.header.Get("X-Effect-Id"); v != "mine" {
		t.Errorf("X-Effect-Id = %q, want the payload's", v)
	}
	if r.body != "[1,2]" {
		t.Errorf("body = %q", r.body)
	}
}

func TestHTTPRequestStatusOutcomes(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 300)
	for _, tc := range []struct {
		name      string
		status    int
		header    map[string]string
		body      string
		permanent bool
		delay     time.Duration // asked for with Retry-After; 0: none
		contains  []string
	}{
		{name: "404", status: 404, body: `{"error":"no such thing"}`, permanent: true,
			contains: []string{"status 404 Not Found", `no such thing`}},
		{name: "400 long body", status: 400, body: long, permanent: true,
			contains: []string{"status 400", strings.Repeat("x", errorBodyBytes) + `"...`}},
		{name: "429 Retry-After seconds", status: 429, header: map[string]string{"Retry-After": "3"},
			delay: 3 * time.Second, contains: []string{"status 429 Too Many Requests"}},
		{name: "503", status: 503, body: "down for maintenance",
			contains: []string{"status 503 Service Unavailable", "down for maintenance"}},
		{name: "408", status: 408, contains: []string{"status 408"}},
		{name: "500 Retry-After date", status: 500,
			header: map[string]string{"Retry-After": time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)},
			delay:  time.Hour, contains: []string{"status 500"}},
		{name: "304 not followed", status: 304, permanent: true, contains: []string{"status 304"}},
		{name: "300 not followed", status: 300, header: map[string]string{"Location": "/elsewhere"},
			permanent: true, contains: []string{"status 300"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			})
			h := newHTTPHandler(t, HTTPConfig{})
			_, err := h(t.Context(), httpEffect(t, map[string]any{
				"url":     srv.URL + "/x?api_key=topsecret",
				"headers": map[string]string{"Authorization": "Bearer s3cret"},
			}))
			mustFail(t, err, tc.permanent, tc.contains...)
			for _, secret := range []string{"s3cret", "topsecret"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows a secret of the request", err)
				}
			}
			d, ok := effects.RetryDelay(err)
			switch {
			case tc.delay == 0 && ok:
				t.Errorf("RetryDelay = %s, want none", d)
			case tc.delay != 0 && !ok:
				t.Errorf("no RetryDelay, want %s", tc.delay)
			// An HTTP date has one-second resolution and is computed when the
			// table is built, before the request runs on a possibly busy
			// machine: allow 10s below, never above.
			case tc.delay != 0 && (d > tc.delay || d < tc.delay-10*time.Second):
				t.Errorf("RetryDelay = %s, want about %s", d, tc.delay)
			}
		})
	}
}

func TestHTTPRequestTimeoutIsRetryable(t *testing.T) {
	t.Parallel()
	srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // slower than any timeout: until the client gives up
	})
	h := newHTTPHandler(t, HTTPConfig{})

	start := time.Now()
	_, err := h(t.Context(), httpEffect(t, map[string]any{"url": srv.URL, "timeout_ms": 50}))
	mustFail(t, err, false, "timed out after 50ms")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v is not context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("took %s, want about 50ms", elapsed)
	}
}

func TestHTTPRequestDefaultTimeout(t *testing.T) {
	t.Parallel()
	srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	h := newHTTPHandler(t, HTTPConfig{DefaultTimeout: 50 * time.Millisecond})

	_, err := h(t.Context(), httpEffect(t, map[string]any{"url": srv.URL}))
	mustFail(t, err, false, "timed out after 50ms")
}

func TestHTTPRequestConnectionRefusedIsRetryable(t *testing.T) {
	t.Parallel()
	// A port nobody listens on: take one, then let it go.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	h := newHTTPHandler(t, HTTPConfig{})

	_, err = h(t.Context(), httpEffect(t, map[string]any{"url": "http://" + addr + "/"}))
	mustFail(t, err, false, "connection refused")
	if _, ok := effects.RetryDelay(err); ok {
		t.Error("a network error asks for a Retry-After delay")
	}
}

func TestHTTPRequestContextCancellationAborts(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
	})
	h := newHTTPHandler(t, HTTPConfig{})

	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-started
		cancel()
	}()
	start := time.Now()
	_, err := h(ctx, httpEffect(t, map[string]any{"url": srv.URL}))
	mustFail(t, err, false)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v is not context.Canceled", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("took %s after cancel", elapsed)
	}
}

func TestHTTPRequestContextCauseKept(t *testing.T) {
	t.Parallel()
	srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	h := newHTTPHandler(t, HTTPConfig{})
	errStop := errors.New("shutting down")

	ctx, cancel := context.WithCancelCause(t.Context())
	time.AfterFunc(20*time.Millisecond, func() { cancel(errStop) })
	_, err := h(ctx, httpEffect(t, map[string]any{"url": srv.URL, "timeout_ms": 10000}))
	mustFail(t, err, false)
	if !errors.Is(err, errStop) {
		t.Errorf("error %v does not carry the context's cause", err)
	}
}

func TestHTTPRequestHostNotAllowed(t *testing.T) {
	t.Parallel()
	srv, got := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	host := strings.TrimPrefix(srv.URL, "http://")

	for _, tc := range []struct {
		name  string
		allow []string
		want  string
	}{
		{"other host", []string{"api.example.com", "localhost"}, `http_request: host "` + host + `" is not in EFFECTS_HTTP_ALLOW`},
		{"empty list allows none", []string{}, `is not in EFFECTS_HTTP_ALLOW (it is empty, so no host is allowed)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHTTPHandler(t, HTTPConfig{Allow: tc.allow})
			_, err := h(t.Context(), httpEffect(t, map[string]any{"url": srv.URL}))
			mustFail(t, err, true, tc.want)
		})
	}
	t.Cleanup(func() { // after the parallel subtests
		if len(got) != 0 {
			t.Error("a host not allowed got a request")
		}
	})
}

func TestHTTPRequestHostPortEntry(t *testing.T) {
	t.Parallel()
	allowed, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	other, got := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	h := newHTTPHandler(t, HTTPConfig{Allow: []string{strings.TrimPrefix(allowed.URL, "http://")}})

	if _, err := h(t.Context(), httpEffect(t, map[string]any{"url": allowed.URL})); err != nil {
		t.Errorf("allowed port: %v", err)
	}
	_, err := h(t.Context(), httpEffect(t, map[string]any{"url": other.URL}))
	mustFail(t, err, true, `host "`+strings.TrimPrefix(other.URL, "http://")+`" is not in EFFECTS_HTTP_ALLOW`)
	if len(got) != 0 {
		t.Error("the port not allowed got a request")
	}
}

func TestHTTPRequestRedirects(t *testing.T) {
	t.Parallel()
	target, targetGot := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `"arrived"`)
	})
	redirector, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/landing", http.StatusFound)
	})
	var loop *httptest.Server
	loop, _ = testServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, loop.URL+"/again", http.StatusTemporaryRedirect)
	})
	hostOf := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

	t.Run("to an allowed host is followed", func(t *testing.T) {
		h := newHTTPHandler(t, HTTPConfig{Allow: []string{hostOf(redirector), hostOf(target)}})
		out, err := h(t.Context(), httpEffect(t, map[string]any{"url": redirector.URL}))
		if err != nil {
			t.Fatalf("handler: %v", err)
		}
		if got, want := completion(t, out), `{"status":200,"body":"arrived"}`; got != want {
			t.Errorf("completion = %s, want %s", got, want)
		}
		<-targetGot
	})
	t.Run("to a host not allowed fails permanently", func(t *testing.T) {
		h := newHTTPHandler(t, HTTPConfig{Allow: []string{hostOf(redirector)}})
		_, err := h(t.Context(), httpEffect(t, map[string]any{"url": redirector.URL}))
		mustFail(t, err, true, `http_request: redirect to host "`+hostOf(target)+`" is not in EFFECTS_HTTP_ALLOW`)
		if len(targetGot) != 0 {
			t.Error("the host not allowed got a request")
		}
	})
	t.Run("a loop stops after a few", func(t *testing.T) {
		h := newHTTPHandler(t, HTTPConfig{Allow: []string{hostOf(loop)}})
		_, err := h(t.Context(), httpEffect(t, map[string]any{"url": loop.URL, "body": "resent"}))
		mustFail(t, err, true, "status 307 Temporary Redirect (not followed: more than 5 redirects)")
	})
}

func TestHTTPRequestResponseSizeCap(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body, want string
	}{
		{"longer is truncated", `{"a":"0123456789abcdef"}`, `{"status":200,"body":"{\"a\":\"0123456789ab","truncated":true}`},
		{"exactly the cap is whole", `{"a":"0123456789"}`, `{"status":200,"body":{"a":"0123456789"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, tc.body) })
			h := newHTTPHandler(t, HTTPConfig{MaxResponseBytes: int64(len(`{"a":"0123456789"}`))})
			out, err := h(t.Context(), httpEffect(t, map[string]any{"url": srv.URL}))
			if err != nil {
				t.Fatalf("handler: %v", err)
			}
			if got := completion(t, out); got != tc.want {
				t.Errorf("completion = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestHTTPRequestBadPayloads(t *testing.T) {
	t.Parallel()
	// Nothing may be sent for a bad payload; the allow-list admits this
	// server so that only the payload can be at fault.
	srv, got := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	u := srv.URL
	for _, tc := range []struct {
		name, payload, want string
	}{
		{"not JSON", `{"url": `, "payload is not valid JSON"},
		{"not an object", `["` + u + `"]`, "payload must be a JSON object"},
		{"null", `null`, "payload must be a JSON object"},
		{"no url", `{"method": "GET"}`, `payload field "url" is required`},
		{"url null", `{"url": null}`, `payload field "url" is required`},
		{"url not a string", `{"url": 42}`, `payload field "url" must be a string`},
		{"ftp url", `{"url": "ftp://127.0.0.1/file"}`, `payload field "url" must be an http or https URL, not scheme "ftp"`},
		{"relative url", `{"url": "/just/a/path"}`, `payload field "url" must be an http or https URL`},
		{"url without host", `{"url": "http:///path"}`, `payload field "url" has no host`},
		{"url bad port", `{"url": "http://127.0.0.1:99999/"}`, `payload field "url": port "99999"`},
		{"url not parseable", `{"url": "http://127.0.0.1:80%zz/"}`, `payload field "url" is not a valid URL`},
		{"url non-ASCII host", `{"url": "http://exämple.com/"}`, `payload field "url": host is not ASCII`},
		{"bad method", `{"url": "` + u + `", "method": "GE T"}`, `payload field "method" "GE T" is not an HTTP method`},
		{"method not a string", `{"url": "` + u + `", "method": 1}`, `payload field "method" must be a string`},
		{"empty method", `{"url": "` + u + `", "method": ""}`, `payload field "method" "" is not an HTTP method`},
		{"CONNECT", `{"url": "` + u + `", "method": "connect"}`, `payload field "method" may not be CONNECT`},
		{"headers not an object", `{"url": "` + u + `", "headers": ["a"]}`, `payload field "headers" must be an object of strings`},
		{"header not a string", `{"url": "` + u + `", "headers": {"X-Count": 1}}`, `payload field "headers": the value of "X-Count" must be a string`},
		{"header name", `{"url": "` + u + `", "headers": {"Bad Name": "x"}}`, `payload field "headers": "Bad Name" is not a valid header name`},
		{"header value newline", `{"url": "` + u + `", "headers": {"X-A": "a\r\nX-B: b"}}`, `payload field "headers": the value of "X-A" has a control character`},
		{"Host header", `{"url": "` + u + `", "headers": {"host": "internal.svc"}}`, `payload field "headers" may not set "host"`},
		{"header twice", `{"url": "` + u + `", "headers": {"x-a": "1", "X-A": "2"}}`, `payload field "headers" sets "X-A" twice`},
		{"timeout zero", `{"url": "` + u + `", "timeout_ms": 0}`, `payload field "timeout_ms" must be a positive whole number`},
		{"timeout negative", `{"url": "` + u + `", "timeout_ms": -5}`, `payload field "timeout_ms" must be a positive whole number`},
		{"timeout fraction", `{"url": "` + u + `", "timeout_ms": 1.5}`, `payload field "timeout_ms" must be a positive whole number`},
		{"timeout string", `{"url": "` + u + `", "timeout_ms": "100"}`, `payload field "timeout_ms" must be a positive whole number`},
		{"timeout huge", `{"url": "` + u + `", "timeout_ms": 99999999999999999}`, `payload field "timeout_ms" is too large`},
		{"unknown field", `{"url": "` + u + `", "header": {"A": "b"}}`, `payload field "header" is not known; the fields are url, method, headers, body, timeout_ms`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHTTPHandler(t, HTTPConfig{})
			_, err := h(t.Context(), effects.Effect{ID: testEffectID, Kind: KindHTTPRequest, Payload: json.RawMessage(tc.payload)})
			mustFail(t, err, true, "http_request: ", tc.want)
		})
	}
	t.Cleanup(func() {
		if len(got) != 0 {
			t.Errorf("a bad payload sent %d request(s)", len(got))
		}
	})
}

func TestHTTPRequestNullFieldsAreAbsent(t *testing.T) {
	t.Parallel()
	srv, got := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	h := newHTTPHandler(t, HTTPConfig{})

	_, err := h(t.Context(), effects.Effect{ID: testEffectID, Kind: KindHTTPRequest, Payload: json.RawMessage(
		`{"url": "` + srv.URL + `", "method": null, "headers": null, "body": null, "timeout_ms": null}`)})
	if err != nil {
		t.Fatalf("handler: %v", err)
	}
	if r := <-got; r.method != http.MethodPost || r.body != "" {
		t.Errorf("got %s with body %q, want POST without a body", r.method, r.body)
	}
}

func TestHTTPRequestCallersClientNotChanged(t *testing.T) {
	t.Parallel()
	srv, _ := testServer(t, func(w http.ResponseWriter, r *http.Request) {})
	client := &http.Client{}
	h := newHTTPHandler(t, HTTPConfig{Client: client})
	if _, err := h(t.Context(), httpEffect(t, map[string]any{"url": srv.URL})); err != nil {
		t.Fatalf("handler: %v", err)
	}
	if client.CheckRedirect != nil {
		t.Error("NewHTTPRequest changed the caller's client")
	}
}

func TestNewHTTPRequestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  HTTPConfig
		want string
	}{
		{"bad allow entry", HTTPConfig{Allow: []string{"https://api.example.com"}}, `HTTPConfig.Allow (EFFECTS_HTTP_ALLOW): entry "https://api.example.com": want host or host:port, not a URL`},
		{"negative timeout", HTTPConfig{DefaultTimeout: -time.Second}, "HTTPConfig.DefaultTimeout -1s is negative"},
		{"negative size", HTTPConfig{MaxResponseBytes: -1}, "HTTPConfig.MaxResponseBytes -1 is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewHTTPRequest(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestAllowEntries(t *testing.T) {
	t.Parallel()
	valid := map[string]struct {
		host string
		port int
	}{
		"api.example.com":    {"api.example.com", 0},
		" API.Example.COM ":  {"api.example.com", 0},
		"api.example.com:80": {"api.example.com", 80},
		"10.0.0.1":           {"10.0.0.1", 0},
		"10.0.0.1:8443":      {"10.0.0.1", 8443},
		"[::1]":              {"::1", 0},
		"[0:0::1]:8080":      {"::1", 8080},
		"[2001:DB8::1]":      {"2001:db8::1", 0},
		"my_service":         {"my_service", 0},
		"localhost:65535":    {"localhost", 65535},
	}
	for entry, want := range valid {
		host, port, err := parseAllowEntry(entry)
		if err != nil || host != want.host || port != want.port {
			t.Errorf("parseAllowEntry(%q) = %q, %d, %v; want %q, %d", entry, host, port, err, want.host, want.port)
		}
	}
	invalid := map[string]string{
		"":                        "empty entry",
		"https://api.example.com": "not a URL",
		"api.example.com/path":    "without a path",
		"user@api.example.com":    "without a path, query or user",
		"::1":                     "must be in brackets",
		"2001:db8::1":             "must be in brackets",
		"[::1":                    "missing ]",
		"[::1]x":                  "want [IPv6] or [IPv6]:port",
		"[api.example.com]":       "brackets must hold an IPv6 address",
		"[127.0.0.1]":             "brackets must hold an IPv6 address",
		"[fe80::1%eth0]":          "without a zone",
		"api.example.com:":        `port ""`,
		"[::1]:":                  `port ""`,
		"api.example.com:0":       `port "0"`,
		"api.example.com:65536":   `port "65536"`,
		"api.example.com:+80":     `port "+80"`,
		"api.example.com:http":    `port "http"`,
		"*.example.com":           `the character '*'`,
		"api..example.com":        "empty label",
		"api.example.com.":        "empty label",
		"exämple.com":             "punycode",
	}
	for entry, want := range invalid {
		_, _, err := parseAllowEntry(entry)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseAllowEntry(%q) err = %v, want one containing %q", entry, err, want)
		}
	}
}

func TestAllowListMatching(t *testing.T) {
	t.Parallel()
	l, err := parseAllowList([]string{"api.example.com", "hooks.example.com:443", "10.0.0.1:8080", "[::1]", "Mixed.Example.com"})
	if err != nil {
		t.Fatal(err)
	}
	for rawURL, want := range map[string]bool{
		"https://api.example.com/x":         true,
		"http://api.example.com:9999/x":     true,
		"https://API.EXAMPLE.COM/x":         true,
		"https://hooks.example.com/x":       true, // 443 by default
		"https://hooks.example.com:443/x":   true,
		"http://hooks.example.com/x":        false, // 80 by default
		"https://hooks.example.com:8443/x":  false,
		"http://10.0.0.1:8080/":             true,
		"http://10.0.0.1/":                  false,
		"http://[::1]:1234/":                true,
		"http://[0:0:0:0:0:0:0:1]/":         true,
		"http://mixed.example.com/":         true,
		"https://evil.com/":                 false,
		"https://api.example.com.evil.com/": false,
		"https://evil.com/?api.example.com": false,
		"https://api.example.com@evil.com/": false,
		"https://api.example.com./":         false,
		"http://127.0.0.1/":                 false,
		"http://[::ffff:10.0.0.1]:8080/":    false,
	} {
		u, err := url.Parse(rawURL)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.check(u, "host"); (err == nil) != want {
			t.Errorf("check(%s) = %v, want allowed=%v", rawURL, err, want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 14, 9, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"3":                             3 * time.Second,
		" 0 ":                           0,
		"Fri, 14 Mar 2025 09:01:00 GMT": time.Minute,
		"Fri, 14 Mar 2025 08:00:00 GMT": 0,
		"99999999999999999999":          time.Duration(1<<63 - 1),
	} {
		if got, ok := parseRetryAfter(v, now); !ok || got != want {
			t.Errorf("parseRetryAfter(%q) = %s, %v; want %s", v, got, ok, want)
		}
	}
	for _, v := range []string{"", "-1", "soon", "1.5"} {
		if got, ok := parseRetryAfter(v, now); ok {
			t.Errorf("parseRetryAfter(%q) = %s, want none", v, got)
		}
	}
}
