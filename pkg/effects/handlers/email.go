package handlers

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
	gosmtp "github.com/wneessen/go-mail/smtp"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/pkg/effects"
)

// KindEmail is the kind of the email handler.
const KindEmail = "email"

// The environment variables of the email handler, read by [ConfigFromEnv].
const (
	// EnvSMTPURL is the SMTP server (see [EmailConfig].SMTPURL). Default:
	// empty, which leaves the email handler unregistered.
	EnvSMTPURL = "EFFECTS_SMTP_URL"
	// EnvEmailFrom is the default sender; required with EFFECTS_SMTP_URL.
	EnvEmailFrom = "EFFECTS_EMAIL_FROM"
	// EnvEmailFromAllow lists the senders a payload may name: addresses
	// and domains, comma-separated. Default: empty, only EFFECTS_EMAIL_FROM.
	EnvEmailFromAllow = "EFFECTS_EMAIL_FROM_ALLOW"
	// EnvEmailToAllow lists the recipient domains, comma-separated.
	// Default: empty, every domain.
	EnvEmailToAllow = "EFFECTS_EMAIL_TO_ALLOW"
	// EnvSMTPTimeout bounds one attempt. Default: 30s.
	EnvSMTPTimeout = "EFFECTS_SMTP_TIMEOUT"
)

// DefaultSMTPTimeout bounds one email attempt, from dialling to the server's
// answer to the message, unless the handler's context ends sooner.
const DefaultSMTPTimeout = 30 * time.Second

const (
	// maxEmailRecipients is RFC 5321's minimum a server must accept in one
	// transaction (section 4.5.3.1.8); more would be split by some servers
	// and refused by others.
	maxEmailRecipients = 100
	// maxHeaderValueBytes bounds a header value (subject included): a
	// subject is a line, not a document.
	maxHeaderValueBytes = 998
)

// EmailConfig configures the email handler.
type EmailConfig struct {
	// SMTPURL is the server the handler submits mail to:
	// "smtp://user:pass@host:587" (STARTTLS required, default port 587),
	// "smtps://user:pass@host:465" (TLS from the first byte, default port
	// 465), or "smtp://host:25?tls=none" (no TLS at all, for a relay on the
	// same host; credentials are then refused). User and password are
	// optional and URL-encoded; with them the handler authenticates with
	// PLAIN or LOGIN, whichever the server offers. Never logged. From
	// EFFECTS_SMTP_URL; empty means the email handler is not registered.
	SMTPURL string
	// From is the sender of a payload without "from" ("Name <addr>" or
	// "addr"). Required. From EFFECTS_EMAIL_FROM.
	From string
	// FromAllow lists the senders a payload's "from" may name besides From:
	// an address ("billing@example.com") allows exactly that address, a
	// domain ("example.com") any address at it. Empty: only From's address.
	// From EFFECTS_EMAIL_FROM_ALLOW.
	FromAllow []string
	// ToAllow lists the recipient domains (to, cc and bcc) mail may go to,
	// compared in lower case and exactly: "example.com" does not allow
	// "mail.example.com". Empty allows every domain, so that anyone who can
	// insert a row can send mail to anyone. From EFFECTS_EMAIL_TO_ALLOW.
	ToAllow []string
	// Timeout bounds one attempt. Default: 30s. From EFFECTS_SMTP_TIMEOUT.
	Timeout time.Duration
	// TLSConfig is the TLS configuration for STARTTLS and smtps, for a
	// private CA say. ServerName defaults to the URL's host. Default:
	// the system's roots.
	TLSConfig *tls.Config
	// HelloName is the name the handler gives in EHLO. Default: the host
	// name (os.Hostname), or "localhost".
	HelloName string
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c EmailConfig) WithDefaults() EmailConfig {
	if c.Timeout == 0 {
		c.Timeout = DefaultSMTPTimeout
	}
	if c.HelloName == "" {
		c.HelloName, _ = os.Hostname()
		if c.HelloName == "" || strings.ContainsAny(c.HelloName, " \t\r\n") {
			c.HelloName = "localhost"
		}
	}
	return c
}

// EmailResult is the completion of a sent email:
//
//	{"message_id": "<effect-id@sender-domain>", "accepted": ["a@example.com", ...]}
//
// MessageID is the Message-ID header, which is the same on every attempt of
// an effect; Accepted lists the envelope recipients the server took (to, cc
// and bcc; all of them, since a refused one fails the effect).
type EmailResult struct {
	MessageID string   `json:"message_id"`
	Accepted  []string `json:"accepted"`
}

// smtpTLSMode is how the handler protects the SMTP connection.
type smtpTLSMode int

const (
	smtpSTARTTLS smtpTLSMode = iota // smtp://: STARTTLS, refused if the server lacks it
	smtpImplicit                    // smtps://: TLS from the first byte
	smtpNoTLS                       // smtp://...?tls=none: plain text
)

// smtpServer is a parsed EFFECTS_SMTP_URL.
type smtpServer struct {
	addr     string // host:port
	host     string
	tls      smtpTLSMode
	user     string
	password string
	hasAuth  bool
}

// parseSMTPURL parses EFFECTS_SMTP_URL. Its errors never repeat the URL's
// password.
func parseSMTPURL(raw string) (smtpServer, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error holds the URL, password included; say only what is wrong.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return smtpServer{}, fmt.Errorf("not a valid URL: %v", err)
	}
	var s smtpServer
	var port string
	switch u.Scheme {
	case "smtp":
		s.tls, port = smtpSTARTTLS, "587"
	case "smtps":
		s.tls, port = smtpImplicit, "465"
	default:
		return smtpServer{}, fmt.Errorf("scheme %q: want smtp:// (STARTTLS) or smtps:// (TLS)", u.Scheme)
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.Fragment != "" {
		return smtpServer{}, errors.New("want smtp://user:password@host:port, without a path")
	}
	s.host = u.Hostname()
	if s.host == "" {
		return smtpServer{}, errors.New("no host")
	}
	if p := u.Port(); p != "" {
		if _, err := parsePort(p); err != nil {
			return smtpServer{}, err
		}
		port = p
	}
	s.addr = net.JoinHostPort(s.host, port)
	q := u.Query()
	for name := range q {
		if name != "tls" {
			return smtpServer{}, fmt.Errorf("query parameter %q is not known; the only one is tls=none", name)
		}
	}
	if q.Has("tls") {
		switch v := q.Get("tls"); {
		case v == "none" && u.Scheme == "smtp":
			s.tls = smtpNoTLS
		case v == "none":
			return smtpServer{}, errors.New("tls=none contradicts smtps://")
		default:
			return smtpServer{}, fmt.Errorf("tls=%q: the only value is none (TLS is on unless turned off)", v)
		}
	}
	if u.User != nil {
		s.user = u.User.Username()
		s.password, _ = u.User.Password()
		s.hasAuth = true
		if s.tls == smtpNoTLS {
			return smtpServer{}, errors.New("credentials with tls=none would cross the network in clear text; use STARTTLS or smtps://")
		}
	}
	return s, nil
}

// addressAllow is a parsed list of addresses and domains.
type addressAllow struct {
	addrs   map[string]bool // lower-case addresses
	domains map[string]bool // lower-case domains
}

func parseAddressAllow(entries []string, addressesToo bool) (addressAllow, error) {
	a := addressAllow{addrs: map[string]bool{}, domains: map[string]bool{}}
	for _, entry := range entries {
		e := strings.ToLower(strings.TrimSpace(entry))
		switch {
		case e == "":
			return addressAllow{}, errors.New("empty entry")
		case strings.Contains(e, "@"):
			if !addressesToo {
				return addressAllow{}, fmt.Errorf("entry %q: want a domain such as example.com, not an address", entry)
			}
			addr, err := mail.ParseAddress(e)
			if err != nil || addr.Address != e || addr.Name != "" {
				return addressAllow{}, fmt.Errorf("entry %q: want an address such as billing@example.com or a domain such as example.com", entry)
			}
			a.addrs[e] = true
		default:
			if err := checkHostName(e); err != nil {
				return addressAllow{}, fmt.Errorf("entry %q: %w", entry, err)
			}
			a.domains[e] = true
		}
	}
	return a, nil
}

func (a addressAllow) allows(addr string) bool {
	addr = strings.ToLower(addr)
	if a.addrs[addr] {
		return true
	}
	return a.domains[addrDomain(addr)]
}

func addrDomain(addr string) string {
	return strings.ToLower(addr[strings.LastIndexByte(addr, '@')+1:])
}

func emailConfigFromEnv(r *envconfig.Reader) EmailConfig {
	return EmailConfig{
		// Read as a secret: a reader's error would print the value.
		SMTPURL:   strings.TrimSpace(r.Secret(EnvSMTPURL)),
		From:      r.String(EnvEmailFrom, ""),
		FromAllow: r.List(EnvEmailFromAllow),
		ToAllow:   r.List(EnvEmailToAllow),
		Timeout:   r.Duration(EnvSMTPTimeout, DefaultSMTPTimeout),
	}
}

// checkEmailConfig checks the email settings read from the environment; the
// error names the variable and never shows EFFECTS_SMTP_URL's password.
func checkEmailConfig(c EmailConfig) error {
	if c.SMTPURL == "" {
		for _, v := range []struct {
			name string
			set  bool
		}{{EnvEmailFrom, c.From != ""}, {EnvEmailFromAllow, len(c.FromAllow) > 0}, {EnvEmailToAllow, len(c.ToAllow) > 0}} {
			if v.set {
				return fmt.Errorf("%s is set but %s is not: set both to enable the email handler", v.name, EnvSMTPURL)
			}
		}
		return nil
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("%s=%q: want a positive duration such as 30s", EnvSMTPTimeout, c.Timeout)
	}
	_, err := NewEmail(c)
	return err
}

type emailSender struct {
	server    smtpServer
	from      *mail.Address
	fromAllow addressAllow
	toAllow   addressAllow // empty: every domain
	timeout   time.Duration
	tlsConfig *tls.Config
	helo      string
}

// NewEmail returns the "email" handler. The package documentation describes
// its payload, completion and outcomes. The error reports a configuration
// that is not valid; it never holds the SMTP password.
func NewEmail(cfg EmailConfig) (effects.HandlerFunc, error) {
	cfg = cfg.WithDefaults()
	server, err := parseSMTPURL(cfg.SMTPURL)
	if err != nil {
		return nil, fmt.Errorf("handlers: EmailConfig.SMTPURL (%s): %w", EnvSMTPURL, err)
	}
	if strings.TrimSpace(cfg.From) == "" {
		return nil, fmt.Errorf("handlers: EmailConfig.From (%s) is required", EnvEmailFrom)
	}
	from, err := parseOneAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("handlers: EmailConfig.From (%s): %w", EnvEmailFrom, err)
	}
	fromAllow, err := parseAddressAllow(cfg.FromAllow, true)
	if err != nil {
		return nil, fmt.Errorf("handlers: EmailConfig.FromAllow (%s): %w", EnvEmailFromAllow, err)
	}
	fromAllow.addrs[strings.ToLower(from.Address)] = true
	toAllow, err := parseAddressAllow(cfg.ToAllow, false)
	if err != nil {
		return nil, fmt.Errorf("handlers: EmailConfig.ToAllow (%s): %w", EnvEmailToAllow, err)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("handlers: EmailConfig.Timeout %s is negative", cfg.Timeout)
	}
	tlsConfig := &tls.Config{}
	if cfg.TLSConfig != nil {
		tlsConfig = cfg.TLSConfig.Clone()
	}
	if tlsConfig.ServerName == "" {
		tlsConfig.ServerName = server.host
	}
	if tlsConfig.MinVersion == 0 {
		tlsConfig.MinVersion = tls.VersionTLS12
	}
	s := &emailSender{
		server: server, from: from, fromAllow: fromAllow, toAllow: toAllow,
		timeout: cfg.Timeout, tlsConfig: tlsConfig, helo: cfg.HelloName,
	}
	return s.handle, nil
}

func (s *emailSender) handle(ctx context.Context, e effects.Effect) (any, error) {
	p, err := parseEmailPayload(e.Payload)
	if err != nil {
		return nil, effects.Permanent(err)
	}
	from := s.from
	if p.from != nil {
		if !s.fromAllow.allows(p.from.Address) {
			return nil, effects.Permanent(fmt.Errorf("email: payload field \"from\": %q is not in %s", p.from.Address, EnvEmailFromAllow))
		}
		from = p.from
	}
	rcpts := p.recipients()
	if len(s.toAllow.domains) > 0 {
		for _, r := range rcpts {
			if !s.toAllow.allows(r) {
				return nil, effects.Permanent(fmt.Errorf("email: recipient %q: domain %q is not in %s", r, addrDomain(r), EnvEmailToAllow))
			}
		}
	}

	messageID := emailMessageID(e.ID, from.Address)
	msg := buildMessage(p, from, messageID)
	var data bytes.Buffer
	if _, err := msg.WriteTo(&data); err != nil {
		return nil, effects.Permanent(fmt.Errorf("email: building the message: %w", err))
	}

	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.send(ctx, from.Address, rcpts, data.Bytes()); err != nil {
		return nil, err
	}
	return EmailResult{MessageID: messageID, Accepted: rcpts}, nil
}

// emailMessageID derives the Message-ID from the effect id, so that every
// attempt and every re-run of one effect sends the same Message-ID and a
// receiver (or a person) can recognise a repeat: SMTP has no idempotent
// submission, and a connection lost after the message was sent cannot tell
// whether it arrived.
func emailMessageID(effectID, fromAddr string) string {
	left := effectID
	if left == "" || !isDotAtomText(left) {
		// Only in tests and custom callers: the pipeline's ids are UUIDs.
		left = "effect-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return left + "@" + addrDomain(fromAddr)
}

// isDotAtomText reports whether s may stand as the left side of a Message-ID
// (RFC 5322 dot-atom-text, letters, digits and - . _ only, to be safe).
func isDotAtomText(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return !strings.HasPrefix(s, ".") && !strings.HasSuffix(s, ".") && !strings.Contains(s, "..")
}

// buildMessage builds the MIME message with go-mail.
func buildMessage(p emailPayload, from *mail.Address, messageID string) *gomail.Msg {
	m := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	m.FromMailAddress(from)
	if len(p.to) > 0 {
		m.ToMailAddress(p.to...)
	}
	if len(p.cc) > 0 {
		m.CcMailAddress(p.cc...)
	}
	if len(p.bcc) > 0 {
		m.BccMailAddress(p.bcc...) // envelope only: go-mail writes no Bcc header
	}
	if p.replyTo != nil {
		m.ReplyToMailAddress(p.replyTo)
	}
	m.Subject(p.subject)
	m.SetMessageIDWithValue(messageID)
	m.SetDate()
	for _, h := range p.headers {
		m.SetGenHeader(gomail.Header(h.name), h.value)
	}
	switch {
	case p.text != nil && p.html != nil:
		m.SetBodyString(gomail.TypeTextPlain, *p.text)
		m.AddAlternativeString(gomail.TypeTextHTML, *p.html)
	case p.text != nil:
		m.SetBodyString(gomail.TypeTextPlain, *p.text)
	default:
		m.SetBodyString(gomail.TypeTextHTML, *p.html)
	}
	return m
}

// send submits one message. SMTP replies 4xx and failures to connect or to
// talk to the server are retried; 5xx replies are permanent.
func (s *emailSender) send(ctx context.Context, from string, rcpts []string, data []byte) error {
	fail := func(step string, err error) error {
		if ctx.Err() != nil {
			// The handler's deadline or shutdown, not the server: keep
			// the context's cause in the chain for the dispatcher.
			return fmt.Errorf("email: %s: %w", step, context.Cause(ctx))
		}
		return smtpError(step, err)
	}
	conn, err := s.dial(ctx)
	if err != nil {
		return fail("connecting to "+s.server.addr, err)
	}
	defer conn.Close()
	// The SMTP client has no context of its own: end the connection with
	// ctx, and bound every read and write by its deadline.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}

	c, err := gosmtp.NewClient(conn, s.server.host)
	if err != nil {
		return fail("greeting", err)
	}
	if err := c.Hello(s.helo); err != nil {
		return fail("EHLO", err)
	}
	if s.server.tls == smtpSTARTTLS {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			// A configuration problem, or someone stripping STARTTLS
			// on the way: never fall back to clear text.
			return effects.Permanent(fmt.Errorf("email: %s does not offer STARTTLS; use smtps:// or, for a relay on this host, ?tls=none", s.server.addr))
		}
		if err := c.StartTLS(s.tlsConfig); err != nil {
			return fail("STARTTLS", err)
		}
	}
	if s.server.hasAuth {
		auth, err := s.auth(c)
		if err != nil {
			return fmt.Errorf("email: AUTH: %w", err)
		}
		if err := c.Auth(auth); err != nil {
			return fail("AUTH", err)
		}
	}
	if err := c.Mail("<" + from + ">"); err != nil {
		return fail("MAIL FROM", err)
	}
	for _, r := range rcpts {
		if err := c.Rcpt("<" + r + ">"); err != nil {
			// All or nothing: a partial send cannot be retried without
			// sending twice to those who got it.
			return fail(fmt.Sprintf("RCPT TO <%s>", r), err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fail("DATA", err)
	}
	if _, err := w.Write(data); err != nil {
		return fail("DATA", err)
	}
	if err := w.Close(); err != nil {
		return fail("end of DATA", err)
	}
	// The server has taken the message; a failed QUIT changes nothing.
	_ = c.Quit()
	return nil
}

func (s *emailSender) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{}
	if s.server.tls == smtpImplicit {
		td := tls.Dialer{NetDialer: &d, Config: s.tlsConfig}
		return td.DialContext(ctx, "tcp", s.server.addr)
	}
	return d.DialContext(ctx, "tcp", s.server.addr)
}

// auth picks PLAIN or LOGIN, whichever the server offers. Both refuse to
// send the credentials over a connection without TLS.
func (s *emailSender) auth(c *gosmtp.Client) (gosmtp.Auth, error) {
	ok, mechs := c.Extension("AUTH")
	if !ok {
		return nil, effects.Permanent(fmt.Errorf("%s offers no AUTH, but %s has credentials", s.server.addr, EnvSMTPURL))
	}
	offered := strings.Fields(strings.ToUpper(mechs))
	switch {
	case slices.Contains(offered, "PLAIN"):
		return gosmtp.PlainAuth("", s.server.user, s.server.password, s.server.host, false), nil
	case slices.Contains(offered, "LOGIN"):
		return gosmtp.LoginAuth(s.server.user, s.server.password, s.server.host, false), nil
	}
	return nil, effects.Permanent(fmt.Errorf("%s offers neither AUTH PLAIN nor AUTH LOGIN (it offers %s)", s.server.addr, mechs))
}

// smtpError classifies err: a 5xx reply is permanent, anything else
// (a 4xx reply, a network or TLS failure) is retried. The text names the
// step and the server's reply; it never holds the credentials.
func smtpError(step string, err error) error {
	var reply *textproto.Error
	if errors.As(err, &reply) {
		e := fmt.Errorf("email: %s: server replied %d %s", step, reply.Code, oneLine(reply.Msg))
		if reply.Code >= 500 && reply.Code <= 599 {
			return effects.Permanent(e)
		}
		return e
	}
	if errors.Is(err, io.EOF) {
		err = errors.New("connection closed by the server")
	}
	return fmt.Errorf("email: %s: %w", step, err)
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > errorBodyBytes {
		s = s[:errorBodyBytes] + "..."
	}
	return s
}

// emailPayload is a checked email payload.
type emailPayload struct {
	to, cc, bcc []*mail.Address
	from        *mail.Address // nil: the configured sender
	replyTo     *mail.Address
	subject     string
	text, html  *string
	headers     []emailHeader
}

type emailHeader struct{ name, value string }

func (p emailPayload) recipients() []string {
	var out []string
	seen := map[string]bool{}
	for _, list := range [][]*mail.Address{p.to, p.cc, p.bcc} {
		for _, a := range list {
			if k := strings.ToLower(a.Address); !seen[k] {
				seen[k] = true
				out = append(out, a.Address)
			}
		}
	}
	return out
}

var emailPayloadFields = []string{"to", "cc", "bcc", "from", "reply_to", "subject", "text", "html", "headers"}

// Headers a payload may not set: they come from the other fields, frame
// the message, or belong to the servers on the way.
var forbiddenEmailHeaders = map[string]bool{
	"From": true, "Sender": true, "To": true, "Cc": true, "Bcc": true, "Reply-To": true,
	"Subject": true, "Date": true, "Message-Id": true, "Mime-Version": true,
	"Return-Path": true, "Received": true, "Dkim-Signature": true,
	"Content-Type": true, "Content-Transfer-Encoding": true, "Content-Disposition": true,
	"Content-Id": true, "Content-Description": true,
}

// parseEmailPayload checks an email payload. Every error names the field
// that is wrong; all of them are permanent.
func parseEmailPayload(raw json.RawMessage) (emailPayload, error) {
	fields, err := payloadObject("email", raw, emailPayloadFields)
	if err != nil {
		return emailPayload{}, err
	}
	var p emailPayload
	if p.to, err = addressListField(fields, "to"); err != nil {
		return emailPayload{}, err
	}
	if p.cc, err = addressListField(fields, "cc"); err != nil {
		return emailPayload{}, err
	}
	if p.bcc, err = addressListField(fields, "bcc"); err != nil {
		return emailPayload{}, err
	}
	if p.from, err = addressField(fields, "from"); err != nil {
		return emailPayload{}, err
	}
	if p.replyTo, err = addressField(fields, "reply_to"); err != nil {
		return emailPayload{}, err
	}
	if s, err := stringField("email", fields, "subject"); err != nil {
		return emailPayload{}, err
	} else if s != nil {
		if err := checkHeaderValue(*s); err != nil {
			return emailPayload{}, fmt.Errorf(`email: payload field "subject" %w`, err)
		}
		p.subject = *s
	}
	if p.text, err = stringField("email", fields, "text"); err != nil {
		return emailPayload{}, err
	}
	if p.html, err = stringField("email", fields, "html"); err != nil {
		return emailPayload{}, err
	}
	if p.headers, err = emailHeadersField(fields["headers"]); err != nil {
		return emailPayload{}, err
	}

	n := len(p.recipients())
	switch {
	case n == 0:
		return emailPayload{}, errors.New(`email: payload needs at least one recipient in "to", "cc" or "bcc"`)
	case n > maxEmailRecipients:
		return emailPayload{}, fmt.Errorf("email: payload has %d recipients; at most %d", n, maxEmailRecipients)
	}
	if p.text == nil && p.html == nil {
		return emailPayload{}, errors.New(`email: payload needs "text", "html" or both`)
	}
	return p, nil
}

// payloadObject decodes a payload that must be a JSON object with only the
// given fields; a field given as null is dropped (counts as absent).
func payloadObject(kind string, raw json.RawMessage, known []string) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		if !json.Valid(raw) {
			return nil, fmt.Errorf("%s: payload is not valid JSON: %v", kind, err)
		}
		return nil, fmt.Errorf("%s: payload must be a JSON object", kind)
	}
	if fields == nil {
		return nil, fmt.Errorf("%s: payload must be a JSON object, not null", kind)
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		// A typo ("subjet") would otherwise do something other than meant.
		if !slices.Contains(known, name) {
			return nil, fmt.Errorf("%s: payload field %q is not known; the fields are %s", kind, name, strings.Join(known, ", "))
		}
		if isNull(fields[name]) {
			delete(fields, name)
		}
	}
	return fields, nil
}

func stringField(kind string, fields map[string]json.RawMessage, name string) (*string, error) {
	raw, ok := fields[name]
	if !ok {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%s: payload field %q must be a string", kind, name)
	}
	return &s, nil
}

// addressListField reads a list of addresses; a single string is taken as
// a list of one.
func addressListField(fields map[string]json.RawMessage, name string) ([]*mail.Address, error) {
	raw, ok := fields[name]
	if !ok {
		return nil, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		var one string
		if err := json.Unmarshal(raw, &one); err != nil {
			return nil, fmt.Errorf("email: payload field %q must be a list of addresses", name)
		}
		list = []string{one}
	}
	out := make([]*mail.Address, 0, len(list))
	for i, s := range list {
		a, err := parseOneAddress(s)
		if err != nil {
			return nil, fmt.Errorf("email: payload field %q, item %d: %w", name, i, err)
		}
		out = append(out, a)
	}
	return out, nil
}

func addressField(fields map[string]json.RawMessage, name string) (*mail.Address, error) {
	s, err := stringField("email", fields, name)
	if err != nil || s == nil {
		return nil, err
	}
	a, err := parseOneAddress(*s)
	if err != nil {
		return nil, fmt.Errorf("email: payload field %q: %w", name, err)
	}
	return a, nil
}

// parseOneAddress parses "addr" or "Name <addr>". A line break anywhere is
// refused before parsing: it is how a header is injected.
func parseOneAddress(s string) (*mail.Address, error) {
	if err := checkHeaderValue(s); err != nil {
		return nil, fmt.Errorf("%q %w", s, err)
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not an email address: %v", s, err)
	}
	if strings.ContainsAny(a.Address, "<>") || !strings.Contains(a.Address, "@") {
		return nil, fmt.Errorf("%q is not an email address", s)
	}
	return a, nil
}

// checkHeaderValue refuses what could end a header line (CR, LF) or hide
// in one (other control characters), and values too long for a line.
func checkHeaderValue(s string) error {
	if strings.ContainsAny(s, "\r\n") {
		return errors.New("has a line break (CR or LF), which could inject a header")
	}
	if !validHeaderValue(s) {
		return errors.New("has a control character")
	}
	if len(s) > maxHeaderValueBytes {
		return fmt.Errorf("is longer than %d bytes", maxHeaderValueBytes)
	}
	return nil
}

func emailHeadersField(raw json.RawMessage) ([]emailHeader, error) {
	if raw == nil {
		return nil, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, errors.New(`email: payload field "headers" must be an object of strings`)
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	slices.Sort(names)
	var out []emailHeader
	seen := map[string]bool{}
	for _, name := range names {
		var value string
		if err := json.Unmarshal(fields[name], &value); err != nil {
			return nil, fmt.Errorf(`email: payload field "headers": the value of %q must be a string`, name)
		}
		if !isHeaderFieldName(name) {
			return nil, fmt.Errorf(`email: payload field "headers": %q is not a valid header name`, name)
		}
		if err := checkHeaderValue(value); err != nil {
			return nil, fmt.Errorf(`email: payload field "headers": the value of %q %w`, name, err)
		}
		key := canonicalMailHeader(name)
		if forbiddenEmailHeaders[key] || strings.HasPrefix(key, "Content-") || strings.HasPrefix(key, "Resent-") {
			return nil, fmt.Errorf(`email: payload field "headers" may not set %q; it follows from the other fields`, name)
		}
		if seen[key] {
			return nil, fmt.Errorf(`email: payload field "headers" sets %q twice, in different cases`, key)
		}
		seen[key] = true
		out = append(out, emailHeader{name: key, value: value})
	}
	return out, nil
}

// isHeaderFieldName reports whether s is an RFC 5322 field name: printable
// ASCII other than the colon.
func isHeaderFieldName(s string) bool {
	if s == "" || len(s) > 76 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// canonicalMailHeader is "x-custom-thing" as "X-Custom-Thing".
func canonicalMailHeader(s string) string {
	b := []byte(strings.ToLower(s))
	upper := true
	for i, c := range b {
		if upper && 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
		upper = c == '-'
	}
	return string(b)
}
