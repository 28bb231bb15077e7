package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// httpPayload is a checked http_request payload.
type httpPayload struct {
	url     *url.URL
	method  string
	headers http.Header
	body    []byte // nil: no body
	timeout time.Duration
}

var httpPayloadFields = []string{"url", "method", "headers", "body", "timeout_ms"}

// Headers a payload may not set. Go's client drops or overrides them without
// a word (Host comes from the URL, framing from the body), and a Host header
// that did reach an allowed reverse proxy could route the request to a
// virtual host behind it that is not allowed.
var forbiddenHeaders = map[string]bool{
	"Host":              true,
	"Content-Length":    true,
	"Transfer-Encoding": true,
	"Connection":        true,
	"Keep-Alive":        true,
	"Proxy-Connection":  true,
	"Te":                true,
	"Trailer":           true,
	"Upgrade":           true,
}

// parseHTTPPayload checks an http_request payload. Every error names the
// field that is wrong; all of them are permanent, since the same payload
// would fail again.
func parseHTTPPayload(raw json.RawMessage) (httpPayload, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		if !json.Valid(raw) {
			return httpPayload{}, fmt.Errorf("http_request: payload is not valid JSON: %v", err)
		}
		return httpPayload{}, errors.New("http_request: payload must be a JSON object")
	}
	if fields == nil {
		return httpPayload{}, errors.New("http_request: payload must be a JSON object, not null")
	}
	// An unknown field is most likely a typo ("header", "timeout"); ignoring
	// it would send a request other than the one the author meant.
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		if !slices.Contains(httpPayloadFields, name) {
			return httpPayload{}, fmt.Errorf("http_request: payload field %q is not known; the fields are %s", name, strings.Join(httpPayloadFields, ", "))
		}
	}
	for name, v := range fields {
		if isNull(v) {
			// null means absent, so a payload built with every field
			// present (say by SQL's jsonb_build_object) works.
			delete(fields, name)
		}
	}

	var p httpPayload
	var err error
	if p.url, err = parseURLField(fields["url"]); err != nil {
		return httpPayload{}, err
	}
	if p.method, err = parseMethodField(fields["method"]); err != nil {
		return httpPayload{}, err
	}
	if p.headers, err = parseHeadersField(fields["headers"]); err != nil {
		return httpPayload{}, err
	}
	if body, ok := fields["body"]; ok {
		p.body = body
	}
	if p.timeout, err = parseTimeoutField(fields["timeout_ms"]); err != nil {
		return httpPayload{}, err
	}
	return p, nil
}

func parseURLField(raw json.RawMessage) (*url.URL, error) {
	if raw == nil {
		return nil, errors.New(`http_request: payload field "url" is required`)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, errors.New(`http_request: payload field "url" must be a string`)
	}
	u, err := url.Parse(s)
	if err != nil {
		// url.Error holds the URL; show only what is wrong with it.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf(`http_request: payload field "url" is not a valid URL: %v`, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf(`http_request: payload field "url" must be an http or https URL, not scheme %q`, u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New(`http_request: payload field "url" has no host`)
	}
	if _, _, err := urlHostPort(u); err != nil {
		return nil, fmt.Errorf(`http_request: payload field "url": %w`, err)
	}
	return u, nil
}

func parseMethodField(raw json.RawMessage) (string, error) {
	if raw == nil {
		return http.MethodPost, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", errors.New(`http_request: payload field "method" must be a string`)
	}
	if !isToken(s) {
		return "", fmt.Errorf(`http_request: payload field "method" %q is not an HTTP method (want a token such as GET, POST or PUT)`, s)
	}
	// Methods are case-sensitive on the wire, but "post" always means POST
	// and many servers refuse the lower-case spelling.
	s = strings.ToUpper(s)
	if s == http.MethodConnect {
		// CONNECT opens a tunnel through a proxy; it is not a request.
		return "", errors.New(`http_request: payload field "method" may not be CONNECT`)
	}
	return s, nil
}

func parseHeadersField(raw json.RawMessage) (http.Header, error) {
	h := make(http.Header)
	if raw == nil {
		return h, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, errors.New(`http_request: payload field "headers" must be an object of strings`)
	}
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		var value string
		if err := json.Unmarshal(fields[name], &value); err != nil {
			return nil, fmt.Errorf(`http_request: payload field "headers": the value of %q must be a string`, name)
		}
		if !isToken(name) {
			return nil, fmt.Errorf(`http_request: payload field "headers": %q is not a valid header name`, name)
		}
		if !validHeaderValue(value) {
			return nil, fmt.Errorf(`http_request: payload field "headers": the value of %q has a control character`, name)
		}
		key := http.CanonicalHeaderKey(name)
		if forbiddenHeaders[key] {
			return nil, fmt.Errorf(`http_request: payload field "headers" may not set %q; it follows from the url and body`, name)
		}
		if _, dup := h[key]; dup {
			// Map order would decide which one is sent.
			return nil, fmt.Errorf(`http_request: payload field "headers" sets %q twice, in different cases`, key)
		}
		h.Set(key, value)
	}
	return h, nil
}

func parseTimeoutField(raw json.RawMessage) (time.Duration, error) {
	if raw == nil {
		return 0, nil
	}
	const msg = `http_request: payload field "timeout_ms" must be a positive whole number of milliseconds`
	// Decoding into json.Number would also take a quoted number; insist on
	// a JSON number.
	if c := bytes.TrimSpace(raw); len(c) == 0 || !(c[0] == '-' || '0' <= c[0] && c[0] <= '9') {
		return 0, errors.New(msg)
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, errors.New(msg)
	}
	ms, err := n.Int64()
	if err != nil || ms <= 0 {
		return 0, errors.New(msg)
	}
	if ms > math.MaxInt64/int64(time.Millisecond) {
		return 0, errors.New(`http_request: payload field "timeout_ms" is too large`)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func isNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}

// isToken reports whether s is an HTTP token (RFC 9110, section 5.6.2), the
// syntax of methods and header names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHeaderValue refuses control characters other than tab: CR and LF
// would split the header, and Go's client would refuse the request with an
// error that looks like a network failure and be retried for nothing.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
