package handlers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/effects-run/effects/pkg/effects"
)

// delivered is what the test SMTP server accepted: one message.
type delivered struct {
	from  string
	rcpts []string
	data  string
	tls   bool   // the session was encrypted when the message came
	user  string // the authenticated user, "" if none
}

// smtpTestServer is a real SMTP server (emersion/go-smtp) on a loopback
// port. Its replies are steered by the fields set before start.
type smtpTestServer struct {
	addr string

	// tls offers STARTTLS (or, with implicit, speaks TLS from the start).
	tls      *tls.Config
	implicit bool
	// user and password, when set, are required: AUTH PLAIN only after
	// STARTTLS, and MAIL is refused without it.
	user, password string
	// rcptErr answers RCPT for an address; nil accepts.
	rcptErr func(to string) error
	// dataErrs answers DATA, one error per message, in order; when it runs
	// out, DATA succeeds.
	dataErrs []error

	mu       sync.Mutex
	sessions int
	got      chan delivered
}

// start listens and serves until the test ends.
func (s *smtpTestServer) start(t *testing.T) *smtpTestServer {
	t.Helper()
	s.got = make(chan delivered, 16)
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.sessions++
		s.mu.Unlock()
		return &smtpTestSession{srv: s, conn: c}, nil
	}))
	srv.Domain = "mx.test"
	srv.TLSConfig = s.tls
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	var l net.Listener
	var err error
	if s.implicit {
		l, err = tls.Listen("tcp", "127.0.0.1:0", s.tls)
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	s.addr = l.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		// Close the listener too: a Close that comes before Serve has
		// registered it would leave Serve waiting for ever.
		l.Close()
		<-done
	})
	return s
}

// sessionCount is how many connections the server has had.
func (s *smtpTestServer) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

type smtpTestSession struct {
	srv   *smtpTestServer
	conn  *smtp.Conn
	user  string
	from  string
	rcpts []string
}

func (ss *smtpTestSession) AuthMechanisms() []string {
	if ss.srv.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *smtpTestSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, password string) error {
		if user != ss.srv.user || password != ss.srv.password {
			return smtp.ErrAuthFailed
		}
		ss.user = user
		return nil
	}), nil
}

func (ss *smtpTestSession) Mail(from string, _ *smtp.MailOptions) error {
	if ss.srv.user != "" && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	ss.from = from
	return nil
}

func (ss *smtpTestSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.srv.rcptErr != nil {
		if err := ss.srv.rcptErr(to); err != nil {
			return err
		}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *smtpTestSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.srv.mu.Lock()
	var reply error
	if len(ss.srv.dataErrs) > 0 {
		reply, ss.srv.dataErrs = ss.srv.dataErrs[0], ss.srv.dataErrs[1:]
	}
	ss.srv.mu.Unlock()
	if reply != nil {
		return reply
	}
	_, isTLS := ss.conn.TLSConnectionState()
	ss.srv.got <- delivered{from: ss.from, rcpts: ss.rcpts, data: string(data), tls: isTLS, user: ss.user}
	return nil
}

func (ss *smtpTestSession) Reset()        { ss.from, ss.rcpts = "", nil }
func (ss *smtpTestSession) Logout() error { return nil }

// selfSignedTLS returns a server configuration with a new self-signed
// certificate for 127.0.0.1 and a client configuration that trusts it.
func selfSignedTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "smtp test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	return server, &tls.Config{RootCAs: pool}
}

func newEmailHandler(t *testing.T, cfg EmailConfig) effects.HandlerFunc {
	t.Helper()
	if cfg.From == "" {
		cfg.From = "Effects <noreply@example.com>"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	h, err := NewEmail(cfg)
	if err != nil {
		t.Fatalf("NewEmail: %v", err)
	}
	return h
}

func emailEffect(t *testing.T, payload map[string]any) effects.Effect {
	t.Helper()
	raw, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	return effects.Effect{ID: testEffectID, Kind: KindEmail, Payload: raw}
}

func receive(t *testing.T, got <-chan delivered) delivered {
	t.Helper()
	select {
	case d := <-got:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("the SMTP server received no message")
		return delivered{}
	}
}

func parseDelivered(t *testing.T, d delivered) *mail.Message {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(d.data))
	if err != nil {
		t.Fatalf("the delivered message does not parse: %v\n%s", err, d.data)
	}
	return m
}

func TestEmailSTARTTLSAuthAndMessage(t *testing.T) {
	t.Parallel()
	serverTLS, clientTLS := selfSignedTLS(t)
	srv := (&smtpTestServer{tls: serverTLS, user: "mailer", password: "p@ss:word/1"}).start(t)
	h := newEmailHandler(t, EmailConfig{
		SMTPURL:   "smtp://mailer:p%40ss%3Aword%2F1@" + srv.addr,
		TLSConfig: clientTLS,
	})

	out, err := h(t.Context(), emailEffect(t, map[string]any{
		"to":       []string{"Ann <ann@example.com>", "bob@example.org"},
		"cc":       []string{"carol@example.com"},
		"bcc":      []string{"dave@example.net"},
		"reply_to": "support@example.com",
		"subject":  "Your invoice: ünïcödé",
		"text":     "Hello in text",
		"html":     "<p>Hello in <b>HTML</b></p>",
		"headers":  map[string]string{"x-campaign": "december", "List-Unsubscribe": "<mailto:unsub@example.com>"},
	}))
	if err != nil {
		t.Fatalf("handler: %v", err)
	}
	wantID := testEffectID + "@example.com"
	if got, want := completion(t, out), `{"message_id":"`+wantID+`","accepted":["ann@example.com","bob@example.org","carol@example.com","dave@example.net"]}`; got != want {
		t.Errorf("completion = %s, want %s", got, want)
	}

	d := receive(t, srv.got)
	if !d.tls || d.user != "mailer" {
		t.Errorf("delivered with tls=%v user=%q, want STARTTLS and user mailer", d.tls, d.user)
	}
	if d.from != "noreply@example.com" {
		t.Errorf("MAIL FROM = %q", d.from)
	}
	if got := strings.Join(d.rcpts, " "); got != "ann@example.com bob@example.org carol@example.com dave@example.net" {
		t.Errorf("RCPT TO = %q", got)
	}
	m := parseDelivered(t, d)
	for name, want := range map[string]string{
		"Message-Id":       "<" + wantID + ">",
		"From":             `"Effects" <noreply@example.com>`,
		"To":               `"Ann" <ann@example.com>, <bob@example.org>`,
		"Cc":               "<carol@example.com>",
		"Reply-To":         "<support@example.com>",
		"X-Campaign":       "december",
		"List-Unsubscribe": "<mailto:unsub@example.com>",
		"Bcc":              "", // the blind copy is in the envelope only
	} {
		if got := m.Header.Get(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	if subject, err := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject")); err != nil || subject != "Your invoice: ünïcödé" {
		t.Errorf("Subject = %q (%v)", m.Header.Get("Subject"), err)
	}
	if ct := m.Header.Get("Content-Type"); !strings.HasPrefix(ct, "multipart/alternative") {
		t.Errorf("Content-Type = %q, want multipart/alternative", ct)
	}
	body, _ := io.ReadAll(m.Body)
	for _, want := range []string{"Hello in text", "<p>Hello in <b>HTML</b></p>", "text/plain", "text/html"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("body lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(d.data, "dave@example.net") {
		t.Error("the bcc address is in the message itself")
	}
}

func TestEmailImplicitTLS(t *testing.T) {
	t.Parallel()
	serverTLS, clientTLS := selfSignedTLS(t)
	srv := (&smtpTestServer{tls: serverTLS, implicit: true}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtps://" + srv.addr, TLSConfig: clientTLS})
	if _, err := h(t.Context(), emailEffect(t, map[string]any{"to": "ann@example.com", "text": "hi"})); err != nil {
		t.Fatalf("handler: %v", err)
	}
	if d := receive(t, srv.got); !d.tls {
		t.Error("delivered without TLS")
	}
}

func TestEmailNoTLSWhenTheURLSaysSo(t *testing.T) {
	t.Parallel()
	srv := (&smtpTestServer{}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + srv.addr + "?tls=none"})
	if _, err := h(t.Context(), emailEffect(t, map[string]any{"to": "ann@example.com", "html": "<p>hi</p>"})); err != nil {
		t.Fatalf("handler: %v", err)
	}
	d := receive(t, srv.got)
	if ct := parseDelivered(t, d).Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type = %q, want text/html", ct)
	}
}

func TestEmailRefusesServerWithoutSTARTTLS(t *testing.T) {
	t.Parallel()
	srv := (&smtpTestServer{}).start(t) // offers no STARTTLS
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + srv.addr})
	_, err := h(t.Context(), emailEffect(t, map[string]any{"to": "ann@example.com", "text": "hi"}))
	mustFail(t, err, true, "does not offer STARTTLS")
	select {
	case d := <-srv.got:
		t.Errorf("a message went out in clear text: %+v", d)
	default:
	}
}

func TestEmailTemporaryFailureThenSuccess(t *testing.T) {
	t.Parallel()
	srv := (&smtpTestServer{dataErrs: []error{&smtp.SMTPError{
		Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Try again later",
	}}}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + srv.addr + "?tls=none"})
	e := emailEffect(t, map[string]any{"to": "ann@example.com", "text": "hi"})

	_, err := h(t.Context(), e)
	mustFail(t, err, false, "email: end of DATA: server replied 451 4.3.0 Try again later")

	out, err := h(t.Context(), e) // the dispatcher's retry
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	d := receive(t, srv.got)
	if got, want := parseDelivered(t, d).Header.Get("Message-Id"), "<"+testEffectID+"@example.com>"; got != want {
		t.Errorf("Message-Id = %q, want %q", got, want)
	}
	if got := completion(t, out); !strings.Contains(got, `"message_id":"`+testEffectID+`@example.com"`) {
		t.Errorf("completion = %s", got)
	}
}

func TestEmailPermanentRecipientFailure(t *testing.T) {
	t.Parallel()
	srv := (&smtpTestServer{rcptErr: func(to string) error {
		if strings.HasPrefix(to, "nobody@") {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}
		}
		return nil
	}}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + srv.addr + "?tls=none"})
	_, err := h(t.Context(), emailEffect(t, map[string]any{"to": []string{"ann@example.com", "nobody@example.com"}, "text": "hi"}))
	mustFail(t, err, true, "email: RCPT TO <nobody@example.com>: server replied 550 5.1.1 No such user")
	select {
	case d := <-srv.got:
		t.Errorf("a message went out although a recipient was refused: %+v", d)
	default:
	}
}

func TestEmailTemporaryRecipientFailureIsRetried(t *testing.T) {
	t.Parallel()
	srv := (&smtpTestServer{rcptErr: func(string) error {
		return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full"}
	}}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + srv.addr + "?tls=none"})
	_, err := h(t.Context(), emailEffect(t, map[string]any{"to": "ann@example.com", "text": "hi"}))
	mustFail(t, err, false, "server replied 452 4.2.2 Mailbox full")
}

func TestEmailAuthFailureIsPermanentAndHidesThePassword(t *testing.T) {
	t.Parallel()
	serverTLS, clientTLS := selfSignedTLS(t)
	srv := (&smtpTestServer{tls: serverTLS, user: "mailer", password: "right"}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://mailer:wrong-secret@" + srv.addr, TLSConfig: clientTLS})
	_, err := h(t.Context(), emailEffect(t, map[string]any{"to": "ann@example.com", "text": "hi"}))
	mustFail(t, err, true, "email: AUTH: server replied 535")
	if strings.Contains(err.Error(), "wrong-secret") {
		t.Errorf("the error shows the password: %v", err)
	}
}

func TestEmailUntrustedCertificateIsNotSent(t *testing.T) {
	t.Parallel()
	serverTLS, _ := selfSignedTLS(t)
	srv := (&smtpTestServer{tls: serverTLS}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + srv.addr}) // system roots
	_, err := h(t.Context(), emailEffect(t, map[string]any{"to": "ann@example.com", "text": "hi"}))
	mustFail(t, err, false, "email: STARTTLS:", "certificate")
}

func TestEmailConnectionRefusedIsRetried(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + addr})
	_, err = h(t.Context(), emailEffect(t, map[string]any{"to": "ann@example.com", "text": "hi"}))
	mustFail(t, err, false, "email: connecting to "+addr)
}

func TestEmailRecipientDomainNotAllowed(t *testing.T) {
	t.Parallel()
	srv := (&smtpTestServer{}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + srv.addr + "?tls=none", ToAllow: []string{"Example.com"}})
	for field, addr := range map[string]string{"to": "eve@evil.test", "cc": "eve@mail.example.com", "bcc": "eve@EXAMPLE.com.evil.test"} {
		_, err := h(t.Context(), emailEffect(t, map[string]any{"to": "ann@example.com", field: addr, "text": "hi"}))
		mustFail(t, err, true, "is not in EFFECTS_EMAIL_TO_ALLOW")
	}
	if _, err := h(t.Context(), emailEffect(t, map[string]any{"to": "Ann@EXAMPLE.COM", "text": "hi"})); err != nil {
		t.Errorf("an allowed domain in upper case: %v", err)
	}
	receive(t, srv.got)
	if n := srv.sessionCount(); n != 1 {
		t.Errorf("the server had %d connections, want 1 (refused recipients must not connect)", n)
	}
}

func TestEmailFromAllow(t *testing.T) {
	t.Parallel()
	srv := (&smtpTestServer{}).start(t)
	h := newEmailHandler(t, EmailConfig{
		SMTPURL:   "smtp://" + srv.addr + "?tls=none",
		From:      "noreply@example.com",
		FromAllow: []string{"billing@example.org", "alerts.example.com"},
	})
	for _, from := range []string{"NoReply@example.com", "Billing <billing@example.org>", "pager@alerts.example.com"} {
		if _, err := h(t.Context(), emailEffect(t, map[string]any{"from": from, "to": "ann@example.com", "text": "hi"})); err != nil {
			t.Errorf("from %q: %v", from, err)
			continue
		}
		addr, _ := mail.ParseAddress(from)
		if d := receive(t, srv.got); d.from != addr.Address {
			t.Errorf("MAIL FROM = %q, want %q", d.from, addr.Address)
		}
	}
	for _, from := range []string{"ceo@example.org", "x@sub.alerts.example.com", "noreply@example.com.evil.test"} {
		_, err := h(t.Context(), emailEffect(t, map[string]any{"from": from, "to": "ann@example.com", "text": "hi"}))
		mustFail(t, err, true, `payload field "from"`, "is not in EFFECTS_EMAIL_FROM_ALLOW")
	}
}

func TestEmailHeaderInjectionIsPermanent(t *testing.T) {
	t.Parallel()
	srv := (&smtpTestServer{}).start(t)
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + srv.addr + "?tls=none", FromAllow: []string{"example.com"}})
	base := func() map[string]any { return map[string]any{"to": "ann@example.com", "text": "hi"} }
	for _, tc := range []struct {
		field string
		value any
	}{
		{"subject", "Hello\r\nBcc: victim@example.org"},
		{"subject", "Hello\nBcc: victim@example.org"},
		{"subject", "Hello\rBcc: victim@example.org"},
		{"to", []string{"ann@example.com\r\nBcc: victim@example.org"}},
		{"cc", "Ann\n <ann@example.com>"},
		{"bcc", []string{"ann@example.com\n"}},
		{"from", "noreply@example.com\r\nBcc: victim@example.org"},
		{"reply_to", "support@example.com\nBcc: victim@example.org"},
		{"headers", map[string]string{"X-Tag": "a\r\nBcc: victim@example.org"}},
		{"headers", map[string]string{"X-Tag\r\nBcc": "victim@example.org"}},
	} {
		p := base()
		p[tc.field] = tc.value
		_, err := h(t.Context(), emailEffect(t, p))
		if err == nil {
			t.Errorf("%s %q: sent", tc.field, tc.value)
			continue
		}
		if !effects.IsPermanent(err) {
			t.Errorf("%s %q: %v is not permanent", tc.field, tc.value, err)
		}
		if !strings.Contains(err.Error(), "line break") && !strings.Contains(err.Error(), "not a valid header name") {
			t.Errorf("%s %q: error %q does not name the line break", tc.field, tc.value, err)
		}
	}
	if n := srv.sessionCount(); n != 0 {
		t.Errorf("the server had %d connections; a refused payload must not connect", n)
	}
}

func TestEmailPayloadErrors(t *testing.T) {
	t.Parallel()
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://127.0.0.1:1"}) // never reached
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf("r%d@example.com", i)
	}
	for _, tc := range []struct {
		name, payload, want string
	}{
		{"not JSON", `{"to": `, "payload is not valid JSON"},
		{"not an object", `["a"]`, "payload must be a JSON object"},
		{"null", `null`, "payload must be a JSON object, not null"},
		{"unknown field", `{"to": "a@example.com", "text": "x", "body": "x"}`, `payload field "body" is not known; the fields are to, cc, bcc, from, reply_to, subject, text, html, headers`},
		{"no recipient", `{"text": "x"}`, `needs at least one recipient`},
		{"empty lists", `{"to": [], "cc": null, "text": "x"}`, `needs at least one recipient`},
		{"no body", `{"to": "a@example.com", "subject": "s"}`, `needs "text", "html" or both`},
		{"to number", `{"to": 5, "text": "x"}`, `payload field "to" must be a list of addresses`},
		{"bad address", `{"to": ["not an address"], "text": "x"}`, `payload field "to", item 0: "not an address" is not an email address`},
		{"subject number", `{"to": "a@example.com", "text": "x", "subject": 1}`, `payload field "subject" must be a string`},
		{"long subject", `{"to": "a@example.com", "text": "x", "subject": "` + strings.Repeat("s", 999) + `"}`, `payload field "subject" is longer than 998 bytes`},
		{"control char", `{"to": "a@example.com", "text": "x", "subject": "a\u0000b"}`, `payload field "subject" has a control character`},
		{"header From", `{"to": "a@example.com", "text": "x", "headers": {"from": "ceo@example.com"}}`, `may not set "from"`},
		{"header Content-Type", `{"to": "a@example.com", "text": "x", "headers": {"Content-Type": "text/html"}}`, `may not set "Content-Type"`},
		{"header twice", `{"to": "a@example.com", "text": "x", "headers": {"x-a": "1", "X-A": "2"}}`, `sets "X-A" twice`},
		{"header name", `{"to": "a@example.com", "text": "x", "headers": {"X A": "1"}}`, `"X A" is not a valid header name`},
		{"header value", `{"to": "a@example.com", "text": "x", "headers": {"X-A": 1}}`, `the value of "X-A" must be a string`},
		{"too many", `{"to": ` + mustJSON(t, many) + `, "text": "x"}`, "101 recipients; at most 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := h(t.Context(), effects.Effect{ID: testEffectID, Kind: KindEmail, Payload: json.RawMessage(tc.payload)})
			mustFail(t, err, true, "email: ", tc.want)
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func TestNewEmailConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  EmailConfig
		want string
	}{
		{"scheme", EmailConfig{SMTPURL: "http://u:hunter2@mail.example.com", From: "a@example.com"}, `scheme "http": want smtp:// (STARTTLS) or smtps:// (TLS)`},
		{"not a URL", EmailConfig{SMTPURL: "smtp://u:hunter2@mail example.com:%zz", From: "a@example.com"}, "not a valid URL"},
		{"no host", EmailConfig{SMTPURL: "smtp://u:hunter2@:587", From: "a@example.com"}, "no host"},
		{"path", EmailConfig{SMTPURL: "smtp://u:hunter2@mail.example.com/x", From: "a@example.com"}, "without a path"},
		{"port", EmailConfig{SMTPURL: "smtp://u:hunter2@mail.example.com:99999", From: "a@example.com"}, `port "99999"`},
		{"param", EmailConfig{SMTPURL: "smtp://u:hunter2@mail.example.com?starttls=no", From: "a@example.com"}, `query parameter "starttls" is not known`},
		{"tls value", EmailConfig{SMTPURL: "smtp://u:hunter2@mail.example.com?tls=maybe", From: "a@example.com"}, `tls="maybe": the only value is none`},
		{"smtps none", EmailConfig{SMTPURL: "smtps://mail.example.com?tls=none", From: "a@example.com"}, "tls=none contradicts smtps://"},
		{"clear credentials", EmailConfig{SMTPURL: "smtp://u:hunter2@mail.example.com:25?tls=none", From: "a@example.com"}, "would cross the network in clear text"},
		{"no from", EmailConfig{SMTPURL: "smtp://mail.example.com"}, "EmailConfig.From (EFFECTS_EMAIL_FROM) is required"},
		{"bad from", EmailConfig{SMTPURL: "smtp://mail.example.com", From: "nobody"}, "EmailConfig.From (EFFECTS_EMAIL_FROM)"},
		{"from allow", EmailConfig{SMTPURL: "smtp://mail.example.com", From: "a@example.com", FromAllow: []string{"*.example.com"}}, "EmailConfig.FromAllow (EFFECTS_EMAIL_FROM_ALLOW)"},
		{"to allow address", EmailConfig{SMTPURL: "smtp://mail.example.com", From: "a@example.com", ToAllow: []string{"ann@example.com"}}, "want a domain such as example.com, not an address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewEmail(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
}

func TestEmailShutdownKeepsTheCause(t *testing.T) {
	t.Parallel()
	// A server that accepts the connection and never greets.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	connected := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			connected <- c
		}
	}()
	t.Cleanup(func() {
		l.Close()
		select {
		case c := <-connected:
			c.Close()
		default:
		}
	})
	h := newEmailHandler(t, EmailConfig{SMTPURL: "smtp://" + l.Addr().String()})
	ctx, cancel := context.WithCancelCause(t.Context())
	stopped := errors.New("dispatcher stopping")
	result := make(chan error, 1)
	go func() {
		_, err := h(ctx, emailEffect(t, map[string]any{"to": "ann@example.com", "text": "hi"}))
		result <- err
	}()
	c := <-connected
	connected <- c // for the clean-up
	cancel(stopped)
	err = <-result
	if err == nil || effects.IsPermanent(err) {
		t.Fatalf("err = %v, want a retryable error", err)
	}
	if !errors.Is(err, stopped) {
		t.Errorf("err = %v, want the context's cause in the chain", err)
	}
}

func TestEmailIsOptIn(t *testing.T) {
	t.Parallel()
	cfg, err := ConfigFromEnv(lookupIn(nil))
	if err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	if err := Register(reg, cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := reg.Lookup(KindEmail); ok {
		t.Error("email is registered without EFFECTS_SMTP_URL")
	}

	cfg, err = ConfigFromEnv(lookupIn(map[string]string{
		EnvSMTPURL:        " smtp://mailer:hunter2@mail.example.com ",
		EnvEmailFrom:      "noreply@example.com",
		EnvEmailFromAllow: "billing@example.com, alerts.example.com",
		EnvEmailToAllow:   "example.com",
		EnvSMTPTimeout:    "5s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Email.SMTPURL != "smtp://mailer:hunter2@mail.example.com" || cfg.Email.Timeout != 5*time.Second ||
		len(cfg.Email.FromAllow) != 2 || len(cfg.Email.ToAllow) != 1 {
		t.Errorf("Email config = %+v", cfg.Email)
	}
	reg = effects.NewRegistry()
	if err := Register(reg, cfg); err != nil {
		t.Fatal(err)
	}
	if _, ok := reg.Lookup(KindEmail); !ok {
		t.Errorf("email is not registered with EFFECTS_SMTP_URL; kinds %q", reg.Kinds())
	}
}

func TestEmailConfigFromEnvErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{EnvEmailFrom: "noreply@example.com"}, "EFFECTS_EMAIL_FROM is set but EFFECTS_SMTP_URL is not"},
		{map[string]string{EnvEmailToAllow: "example.com"}, "EFFECTS_EMAIL_TO_ALLOW is set but EFFECTS_SMTP_URL is not"},
		{map[string]string{EnvSMTPURL: "smtp://u:hunter2@mail.example.com"}, "EFFECTS_EMAIL_FROM) is required"},
		{map[string]string{EnvSMTPURL: "smtpx://u:hunter2@mail.example.com", EnvEmailFrom: "a@example.com"}, "EFFECTS_SMTP_URL"},
		{map[string]string{EnvSMTPURL: "smtp://u:hunter2@mail.example.com", EnvEmailFrom: "a@example.com", EnvSMTPTimeout: "0s"}, `EFFECTS_SMTP_TIMEOUT="0s"`},
		{map[string]string{EnvSMTPURL: "smtp://u:hunter2@mail.example.com", EnvEmailFrom: "a@example.com", EnvSMTPTimeout: "soon"}, `EFFECTS_SMTP_TIMEOUT="soon"`},
	} {
		_, err := ConfigFromEnv(lookupIn(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ConfigFromEnv(%v) err = %v, want one containing %q", tc.env, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}
