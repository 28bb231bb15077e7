package natsconn

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzRedact checks that NATS_URL's credentials never reach a log line:
// for every server of a NATS_URL that nats.go would connect to with a user
// and password (a URL without a scheme included: nats.go puts nats:// in
// front), the password is not in Redact's output. The seed corpus (f.Add and
// testdata/fuzz/FuzzRedact/) runs in every `go test`; `make fuzz` fuzzes it.
func FuzzRedact(f *testing.F) {
	for _, s := range []string{
		"nats://127.0.0.1:4222", "nats://user:s3cret@host:4222", "tls://token-abc123@host",
		"nats://a:b@h1:4222, nats://c:d3f@h2:4222", "user:s3cret@host:4222", "host:4222", "",
		"nats://us%40er:p%3Ass@host", " user:s3cret@host ,nats://x:y@z", "ws://u:pw99@h/path?q=1", "%zz://a:b@c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		out := Redact(raw)
		for _, part := range strings.Split(raw, ",") {
			p := strings.TrimSpace(part)
			if p == "" {
				continue
			}
			// What nats.go's parseServerURL does with the server URL.
			if !strings.Contains(p, "://") {
				p = "nats://" + p
			}
			u, err := url.Parse(p)
			if err != nil || u.User == nil {
				continue
			}
			for _, secret := range secretsOf(u.User) {
				// A secret that is also in what Redact may keep (the
				// host, the path, another server) cannot be told apart.
				rest := *u
				rest.User = nil
				if len(secret) < 4 || strings.Contains(rest.String(), secret) || strings.Contains("redacted nats:// (unparsable url)", secret) ||
					strings.Count(raw, secret) > 1 {
					continue
				}
				if strings.Contains(out, secret) {
					t.Fatalf("Redact(%q) = %q: it shows %q", raw, out, secret)
				}
			}
		}
	})
}

// secretsOf returns what of user info must not be logged: the password, or
// the user name when it stands alone (a token), raw and decoded.
func secretsOf(ui *url.Userinfo) []string {
	var out []string
	raw := ui.String()
	if pw, ok := ui.Password(); ok {
		out = append(out, pw)
		if _, enc, ok := strings.Cut(raw, ":"); ok {
			out = append(out, enc)
		}
	} else {
		out = append(out, ui.Username(), raw)
	}
	return out
}
