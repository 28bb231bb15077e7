package console

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// role is what a request may do.
type role int

const (
	roleNone     role = iota
	roleReadOnly      // sees everything, changes nothing
	roleOperator      // sees and acts
)

const (
	sessionCookie = "effects_console_session"
	flashCookie   = "effects_console_flash"
	// sessionTTL is how long a login lasts.
	sessionTTL = 12 * time.Hour
	// MinTokenLength is the shortest token New accepts: a token is the only
	// thing between the network and the retry, cancel and pause buttons.
	MinTokenLength = 16
	maxNameLength  = 64
)

// auth decides who a request is. Tokens are compared in constant time, as
// SHA-256 digests (equal lengths whatever was sent); a session cookie is
// "<role>.<expiry>.<name>.<MAC>" with an HMAC-SHA256 keyed by the role's
// token, so it needs no server-side state, survives a restart, is valid on
// every replica, and dies when the token is changed.
type auth struct {
	open         bool // no tokens: every request may act (loopback only)
	operator     [32]byte
	readOnly     [32]byte
	hasReadOnly  bool
	operatorKey  []byte
	readOnlyKey  []byte
	now          func() time.Time
	secureCookie func(*http.Request) bool
}

func newAuth(token, readOnlyToken string) *auth {
	a := &auth{open: token == "" && readOnlyToken == "", now: time.Now,
		secureCookie: func(r *http.Request) bool { return r.TLS != nil }}
	if token != "" {
		a.operator = sha256.Sum256([]byte(token))
		a.operatorKey = sessionKey(token)
	}
	if readOnlyToken != "" {
		a.readOnly, a.hasReadOnly = sha256.Sum256([]byte(readOnlyToken)), true
		a.readOnlyKey = sessionKey(readOnlyToken)
	}
	return a
}

func sessionKey(token string) []byte {
	k := sha256.Sum256([]byte("effects console session v1\x00" + token))
	return k[:]
}

// tokenRole is the role of a token ("" or a wrong one: roleNone).
func (a *auth) tokenRole(token string) role {
	if token == "" {
		return roleNone
	}
	d := sha256.Sum256([]byte(token))
	isOperator := a.operatorKey != nil && subtle.ConstantTimeCompare(d[:], a.operator[:]) == 1
	isReadOnly := a.hasReadOnly && subtle.ConstantTimeCompare(d[:], a.readOnly[:]) == 1
	switch {
	case isOperator:
		return roleOperator
	case isReadOnly:
		return roleReadOnly
	}
	return roleNone
}

// identity is who a request is.
type identity struct {
	role role
	// name is who logged in, as they said (recorded on what they change);
	// "" when not given.
	name string
	// session is true when the identity came from the cookie (a logout
	// button makes sense).
	session bool
}

// errBadToken is a bearer token that matches neither token.
var errBadToken = errors.New("the bearer token is not valid")

// identify reads the bearer token or the session cookie. A bearer header
// that is wrong is an error, not a fallback to the cookie.
func (a *auth) identify(r *http.Request) (identity, error) {
	if a.open {
		return identity{role: roleOperator}, nil
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return identity{}, errBadToken
		}
		rl := a.tokenRole(strings.TrimSpace(token))
		if rl == roleNone {
			return identity{}, errBadToken
		}
		return identity{role: rl}, nil
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		if id, ok := a.verifySession(c.Value); ok {
			return id, nil
		}
	}
	return identity{}, nil
}

// session makes a cookie value for rl and name, valid for sessionTTL.
func (a *auth) session(rl role, name string) string {
	payload := strconv.Itoa(int(rl)) + "." + strconv.FormatInt(a.now().Add(sessionTTL).Unix(), 10) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(name))
	return payload + "." + base64.RawURLEncoding.EncodeToString(mac(a.keyOf(rl), payload))
}

func (a *auth) keyOf(rl role) []byte {
	switch rl {
	case roleOperator:
		return a.operatorKey
	case roleReadOnly:
		return a.readOnlyKey
	}
	return nil
}

func (a *auth) verifySession(v string) (identity, bool) {
	payload, sig, ok := cutLast(v, ".")
	if !ok {
		return identity{}, false
	}
	parts := strings.Split(payload, ".")
	if len(parts) != 3 {
		return identity{}, false
	}
	n, err := strconv.Atoi(parts[0])
	rl := role(n)
	key := a.keyOf(rl)
	if err != nil || key == nil {
		return identity{}, false
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, mac(key, payload)) {
		return identity{}, false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || a.now().Unix() >= exp {
		return identity{}, false
	}
	name, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return identity{}, false
	}
	return identity{role: rl, name: string(name), session: true}, true
}

func mac(key []byte, payload string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}

// cleanName makes what someone typed as their name fit to be recorded:
// printable, one line, at most maxNameLength characters.
func cleanName(s string) string {
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }), " ")
	if r := []rune(s); len(r) > maxNameLength {
		s = string(r[:maxNameLength])
	}
	return s
}

// IsLoopback reports whether host (a name or an address, without a port)
// is a loopback one: localhost, 127.0.0.0/8 or ::1.
func IsLoopback(host string) bool {
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loopbackHost reports whether the request was addressed to a loopback
// name. Without tokens the console answers only such requests: a web page
// elsewhere could otherwise point a name of its own at 127.0.0.1 (DNS
// rebinding) and read or drive the console from the operator's browser.
func loopbackHost(r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return IsLoopback(host)
}
