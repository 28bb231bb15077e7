package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/propagation"

	"github.com/effects-run/effects/pkg/effects"
)

// Defaults of [HTTPConfig].
const (
	DefaultHTTPTimeout      = 30 * time.Second
	DefaultMaxResponseBytes = 256 << 10
)

const (
	// maxRedirects is how many redirects one request follows. A few cover
	// http→https and a moved resource; more is a loop or a misconfiguration.
	maxRedirects = 5
	// errorBodyBytes is how much of an error response's body goes into the
	// error text: enough to show an API's error message, short enough for
	// the row's error column.
	errorBodyBytes = 200
	// errorReadBytes bounds how much of an error response's body is read at
	// all; only its beginning is shown.
	errorReadBytes = 4 << 10
	// maxIdleConnsPerHost: a dispatcher runs many effects of a kind at once,
	// often against one host. Go's default keeps 2 idle connections per
	// host, so most requests would open a new connection (and TLS session).
	maxIdleConnsPerHost = 100

	userAgent = "effects-http_request"
)

// HTTPConfig configures the http_request handler.
type HTTPConfig struct {
	// Allow lists the hosts requests may reach, redirects included: "host"
	// allows that host on any port, "host:port" only on that port (a URL
	// without a port has port 80 for http, 443 for https). Host names are
	// compared in lower case; an IPv6 address is written in brackets
	// ("[::1]", "[::1]:8080"); no scheme, path or wildcard. Empty allows
	// none. From EFFECTS_HTTP_ALLOW.
	Allow []string
	// Client sends the requests. Default: a client of the handler's own over
	// a clone of http.DefaultTransport (so HTTP_PROXY and friends apply).
	// The handler works on a copy whose CheckRedirect enforces Allow before
	// calling the client's own CheckRedirect, if any; Client is not changed.
	Client *http.Client
	// DefaultTimeout bounds a request whose payload has no timeout_ms, from
	// sending it to reading the whole response. The handler's context may
	// end it sooner. Default: 30s. From EFFECTS_HTTP_TIMEOUT.
	DefaultTimeout time.Duration
	// MaxResponseBytes caps how much of a response body is read. A longer
	// body of a 2xx response is cut there and the completion says
	// "truncated": true. Default: 256 KiB (fits in NATS's default 1 MiB
	// max_payload). From
	// EFFECTS_HTTP_MAX_RESPONSE_BYTES.
	MaxResponseBytes int64
	// SigningSecrets, when given, make every request carry the Standard
	// Webhooks headers webhook-id (the effect's id), webhook-timestamp (the
	// attempt's Unix time) and webhook-signature (one "v1,<signature>" per
	// secret, space-separated), so that a receiver can check the call came
	// from this dispatcher and was not changed. Each secret is
	// "whsec_<base64 of a 24- to 64-byte key>". Default: none, no
	// signature. From EFFECTS_HTTP_SIGNING_SECRET.
	SigningSecrets SigningSecrets
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c HTTPConfig) WithDefaults() HTTPConfig {
	if c.DefaultTimeout == 0 {
		c.DefaultTimeout = DefaultHTTPTimeout
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	}
	return c
}

func (c HTTPConfig) validate() (allowList, *webhookSigner, error) {
	if c.DefaultTimeout < 0 {
		return allowList{}, nil, fmt.Errorf("handlers: HTTPConfig.DefaultTimeout %s is negative", c.DefaultTimeout)
	}
	if c.MaxResponseBytes < 0 {
		return allowList{}, nil, fmt.Errorf("handlers: HTTPConfig.MaxResponseBytes %d is negative", c.MaxResponseBytes)
	}
	allow, err := parseAllowList(c.Allow)
	if err != nil {
		return allowList{}, nil, fmt.Errorf("handlers: HTTPConfig.Allow (%s): %w", EnvHTTPAllow, err)
	}
	signer, err := newWebhookSigner(c.SigningSecrets)
	if err != nil {
		return allowList{}, nil, fmt.Errorf("handlers: HTTPConfig.SigningSecrets (%s): %w", EnvHTTPSigningSecret, err)
	}
	return allow, signer, nil
}

// HTTPResponse is the completion of a successful http_request:
//
//	{"status": 200, "body": <JSON value, or a string>}
//
// plus "truncated": true when only the beginning of the body was kept.
type HTTPResponse struct {
	// Status is the response's status code.
	Status int `json:"status"`
	// Body is the response body as JSON when it is valid JSON, otherwise as
	// a JSON string (invalid UTF-8 replaced by U+FFFD; "" when empty).
	Body json.RawMessage `json:"body"`
	// Truncated reports that the body was longer than MaxResponseBytes, or
	// broke off while being read, and Body holds its beginning as a string.
	Truncated bool `json:"truncated,omitempty"`
}

// errRequestTimeout is the cause of a request's own context when its timeout
// passes, to tell it from the handler's context ending.
var errRequestTimeout = errors.New("request timeout")

type httpRequester struct {
	allow   allowList
	client  *http.Client
	timeout time.Duration
	maxBody int64
	signer  *webhookSigner   // nil: requests are not signed
	now     func() time.Time // the clock of webhook-timestamp
}

// NewHTTPRequest returns the "http_request" handler. The package
// documentation describes its payload, completion and outcomes. The error
// reports a configuration that is not valid, such as an allow-list entry
// with a scheme.
func NewHTTPRequest(cfg HTTPConfig) (effects.HandlerFunc, error) {
	h, err := newHTTPRequester(cfg)
	if err != nil {
		return nil, err
	}
	return h.handle, nil
}

func newHTTPRequester(cfg HTTPConfig) (*httpRequester, error) {
	cfg = cfg.WithDefaults()
	allow, signer, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	h := &httpRequester{allow: allow, timeout: cfg.DefaultTimeout, maxBody: cfg.MaxResponseBytes, signer: signer, now: time.Now}
	h.client = h.newClient(cfg.Client)
	return h, nil
}

func (h *httpRequester) newClient(base *http.Client) *http.Client {
	var c http.Client
	if base != nil {
		c = *base
	} else {
		c.Transport = newTransport()
	}
	next := c.CheckRedirect
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) > maxRedirects {
			// Hand back the redirect response itself: it fails as an
			// unfollowed 3xx, with its status in the error.
			return http.ErrUseLastResponse
		}
		// Without this an allowed host could send the dispatcher anywhere,
		// an internal service included.
		if err := h.allow.check(req.URL, "redirect to host"); err != nil {
			return effects.Permanent(err)
		}
		// Go copies the first request's headers, signature included, but
		// a 301, 302 or 303 drops the body: sign what this one sends.
		resign(req)
		if next != nil {
			return next(req, via)
		}
		return nil
	}
	return &c
}

func newTransport() http.RoundTripper {
	t, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		// Someone replaced the default; use theirs rather than guess.
		return http.DefaultTransport
	}
	t = t.Clone()
	t.MaxIdleConnsPerHost = maxIdleConnsPerHost
	return t
}

func (h *httpRequester) handle(ctx context.Context, e effects.Effect) (any, error) {
	p, err := parseHTTPPayload(e.Payload)
	if err != nil {
		return nil, effects.Permanent(err)
	}
	var signed *signedCall
	if h.signer != nil {
		if signed, err = h.signedCall(e, p); err != nil {
			return nil, effects.Permanent(err)
		}
	}

	timeout := h.timeout
	if p.timeout > 0 {
		timeout = p.timeout
	}
	// A sooner deadline of ctx (the handler timeout) still wins.
	reqCtx, cancel := context.WithTimeoutCause(ctx, timeout, errRequestTimeout)
	defer cancel()
	if signed != nil {
		reqCtx = withSignedCall(reqCtx, signed)
	}

	var body io.Reader
	if p.body != nil {
		body = bytes.NewReader(p.body) // also sets GetBody, so 307/308 can resend it
	}
	req, err := http.NewRequestWithContext(reqCtx, p.method, p.url.String(), body)
	if err != nil {
		return nil, effects.Permanent(fmt.Errorf(`http_request: payload field "url" or "method": %w`, err))
	}
	// Check the request's own URL, the one the transport dials.
	if err := h.allow.check(req.URL, "host"); err != nil {
		return nil, effects.Permanent(err)
	}
	req.Header.Set("User-Agent", userAgent)
	// The attempt's trace continues at the target (W3C traceparent).
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	if e.ID != "" {
		// Delivery is at least once: this lets the receiver recognise a
		// retry of an effect it has already acted on.
		req.Header.Set("X-Effect-Id", e.ID)
	}
	if p.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range p.headers {
		req.Header[k] = v
	}
	if signed != nil {
		// The bytes signed are the bytes sent: p.body is what the request's
		// body reader (and GetBody, for a 307 or 308) returns.
		signed.sign(req.Header, p.body)
	}

	resp, err := h.client.Do(req)
	if err != nil {
		return nil, requestError(ctx, reqCtx, req, timeout, err)
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _, _ := readBody(resp.Body, min(h.maxBody, errorReadBytes))
		return nil, statusError(resp, data)
	}
	data, truncated, readErr := readBody(resp.Body, h.maxBody)
	// The server has acted on the request. A body too long or broken off
	// does not make the effect fail, which would invite a re-run of work
	// already done: keep what arrived and say it is partial.
	partial := truncated || readErr != nil
	return HTTPResponse{Status: resp.StatusCode, Body: completionBody(data, partial), Truncated: partial}, nil
}

// signedCall is what this attempt's requests are signed with: the effect's
// id as webhook-id, the same on every attempt and re-run, so that the
// receiver can recognise a repeat; the attempt's time as webhook-timestamp,
// which receivers check against their clock to refuse a replayed request.
func (h *httpRequester) signedCall(e effects.Effect, p httpPayload) (*signedCall, error) {
	for k := range p.headers {
		if isWebhookHeader(k) {
			// The signature would not match the header the payload asks
			// for, or would cover a value the payload chose.
			return nil, fmt.Errorf(`http_request: payload field "headers" may not set %q: the dispatcher signs its requests (%s)`, k, EnvHTTPSigningSecret)
		}
	}
	// The specification wants an id that cannot hold the "." separating
	// the signed parts; the dispatcher hands every handler a UUID.
	if !effects.IsUUID(e.ID) {
		return nil, fmt.Errorf("http_request: a signed request needs the effect's id (a UUID) as webhook-id, got %.80q", e.ID)
	}
	return &signedCall{signer: h.signer, id: e.ID, timestamp: h.now().Unix(), body: p.body}, nil
}

// requestError classifies an error from Client.Do: a refused redirect is
// permanent; timeouts, network errors and the end of ctx are retryable.
func requestError(ctx, reqCtx context.Context, req *http.Request, timeout time.Duration, err error) error {
	var perm *effects.PermanentError
	if errors.As(err, &perm) {
		// From CheckRedirect, under the client's url.Error.
		return perm
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		// It repeats the URL, query included; ours is shown without.
		err = uerr.Err
	}
	where := req.Method + " " + displayURL(req.URL)
	if ctx.Err() != nil {
		// Shutdown or the handler timeout: the dispatcher decides what it
		// means, so keep its cause in the chain.
		return fmt.Errorf("http_request: %s: %w", where, context.Cause(ctx))
	}
	if errors.Is(context.Cause(reqCtx), errRequestTimeout) {
		// The client reports the context's cause; say it is a deadline too,
		// for callers that test errors.Is(err, context.DeadlineExceeded).
		return fmt.Errorf("http_request: %s: timed out after %s: %w", where, timeout, context.DeadlineExceeded)
	}
	return fmt.Errorf("http_request: %s: %w", where, err)
}

// statusError turns a response other than 2xx into the handler's error:
// retryable for 408, 429 and 5xx (after Retry-After when given), permanent
// otherwise.
func statusError(resp *http.Response, body []byte) error {
	code := resp.StatusCode
	var note string
	if isRedirect(code) && resp.Header.Get("Location") != "" {
		// Go's client follows these unless CheckRedirect stopped it.
		note = fmt.Sprintf(" (not followed: more than %d redirects)", maxRedirects)
	}
	err := fmt.Errorf("http_request: %s %s: status %d %s%s%s",
		resp.Request.Method, displayURL(resp.Request.URL), code, http.StatusText(code), note, bodyPrefix(body))
	if code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || (code >= 500 && code <= 599) {
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return effects.RetryAfter(d, err)
		}
		return err
	}
	return effects.Permanent(err)
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date
// (RFC 9110, section 10.2.3). A date in the past means now.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return time.Duration(math.MaxInt64), true
			}
			return 0, false
		}
		if n > int64(math.MaxInt64/time.Second) {
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// readBody reads at most limit bytes of r; truncated reports that r had more.
func readBody(r io.Reader, limit int64) (data []byte, truncated bool, err error) {
	n := limit
	if n < math.MaxInt64 {
		n++ // one byte more tells a body of exactly limit bytes from a longer one
	}
	data, err = io.ReadAll(io.LimitReader(r, n))
	if int64(len(data)) > limit {
		return data[:limit], true, nil
	}
	return data, false, err
}

// completionBody is the "body" of the completion: the body itself when it is
// complete, valid JSON, else a JSON string holding it. A partial body is
// always a string, so that a number cut short is not taken for the value.
func completionBody(data []byte, partial bool) json.RawMessage {
	if !partial && json.Valid(data) {
		return data
	}
	s, _ := effects.EncodeJSON(string(data)) // cannot fail for a string; not HTML-escaped
	return s
}

// bodyPrefix is the start of an error response's body for the error text,
// quoted so that it stays on one line.
func bodyPrefix(body []byte) string {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return ""
	}
	if len(body) <= errorBodyBytes {
		return fmt.Sprintf(": body %q", body)
	}
	cut := errorBodyBytes
	for cut > 0 && !utf8.RuneStart(body[cut]) {
		cut-- // don't split a character
	}
	return fmt.Sprintf(": body %q...", body[:cut])
}

// displayURL is u for an error text: without user information, query and
// fragment, which may hold credentials (an api_key parameter, say).
func displayURL(u *url.URL) string {
	c := *u
	c.User = nil
	c.RawQuery = ""
	c.ForceQuery = false
	c.Fragment = ""
	c.RawFragment = ""
	return c.String()
}
