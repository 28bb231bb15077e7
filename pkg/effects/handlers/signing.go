package handlers

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode"
)

// EnvHTTPSigningSecret holds the Standard Webhooks secrets http_request signs
// its calls with: "whsec_<base64 of the key>", several separated by commas or
// spaces while a secret is rotated. Default: empty, no signature.
const EnvHTTPSigningSecret = "EFFECTS_HTTP_SIGNING_SECRET"

// The Standard Webhooks headers (https://www.standardwebhooks.com), in Go's
// canonical form; header names are case-insensitive on the wire.
const (
	headerWebhookID        = "Webhook-Id"
	headerWebhookTimestamp = "Webhook-Timestamp"
	headerWebhookSignature = "Webhook-Signature"
)

const (
	signingSecretPrefix = "whsec_"
	// The specification's bounds for a symmetric key: at least 24 bytes
	// (192 bits), at most 64 (512 bits).
	minSigningKeyBytes = 24
	maxSigningKeyBytes = 64
)

// SigningSecrets are Standard Webhooks secrets, each "whsec_<base64 of the
// key>". Printing them (fmt's %v, %+v, %#v) shows only how many there are,
// so a configuration that is logged does not leak them.
type SigningSecrets []string

// String hides the secrets.
func (s SigningSecrets) String() string {
	return fmt.Sprintf("[%d signing secrets, not shown]", len(s))
}

// GoString hides the secrets from %#v.
func (s SigningSecrets) GoString() string { return s.String() }

// splitSigningSecrets splits EFFECTS_HTTP_SIGNING_SECRET: commas or white
// space separate secrets, and neither can occur in one (base64 has no comma
// or space), so either reads the same.
func splitSigningSecrets(v string) SigningSecrets {
	f := strings.FieldsFunc(v, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	if len(f) == 0 {
		return nil
	}
	return SigningSecrets(f)
}

// webhookSigner signs requests the Standard Webhooks way with every key it
// holds: the receiver accepts a request when one of the signatures is made
// with a key it knows, which is how a key is rotated without downtime.
type webhookSigner struct {
	keys [][]byte
}

// newWebhookSigner parses secrets; nil without any. Its errors say which
// secret is wrong and how, and never show any part of it.
func newWebhookSigner(secrets SigningSecrets) (*webhookSigner, error) {
	if len(secrets) == 0 {
		return nil, nil
	}
	s := &webhookSigner{}
	for i, secret := range secrets {
		which := fmt.Sprintf("secret %d of %d", i+1, len(secrets))
		if len(secrets) == 1 {
			which = "the secret"
		}
		encoded, ok := strings.CutPrefix(secret, signingSecretPrefix)
		if !ok {
			return nil, fmt.Errorf("%s does not start with %q; want the Standard Webhooks form whsec_<base64 of the key>", which, signingSecretPrefix)
		}
		key, err := base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			var at base64.CorruptInputError
			if errors.As(err, &at) {
				return nil, fmt.Errorf("%s: the part after %s is not standard base64 (bad character or padding at byte %d of it)", which, signingSecretPrefix, int64(at))
			}
			return nil, fmt.Errorf("%s: the part after %s is not standard base64", which, signingSecretPrefix)
		}
		if len(key) < minSigningKeyBytes || len(key) > maxSigningKeyBytes {
			return nil, fmt.Errorf("%s: the key is %d bytes long; the Standard Webhooks specification wants %d to %d random bytes (e.g. `openssl rand -base64 32`)",
				which, len(key), minSigningKeyBytes, maxSigningKeyBytes)
		}
		s.keys = append(s.keys, key)
	}
	return s, nil
}

// signature is the webhook-signature header's value: "v1,<base64 of
// HMAC-SHA256(key, id.timestamp.body)>" for each key, space-separated.
func (s *webhookSigner) signature(id string, timestamp int64, body []byte) string {
	var b strings.Builder
	ts := strconv.FormatInt(timestamp, 10)
	for i, key := range s.keys {
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id))
		mac.Write([]byte{'.'})
		mac.Write([]byte(ts))
		mac.Write([]byte{'.'})
		mac.Write(body)
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("v1,")
		b.WriteString(base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	}
	return b.String()
}

// isWebhookHeader reports whether a payload's header (canonical form) is one
// the signer sets.
func isWebhookHeader(key string) bool {
	switch key {
	case headerWebhookID, headerWebhookTimestamp, headerWebhookSignature:
		return true
	}
	return false
}

// signedCall is what one attempt's requests are signed with. It rides in the
// request's context so that CheckRedirect, which the client shares between
// all calls, can sign a redirected request over the body that request
// carries.
type signedCall struct {
	signer    *webhookSigner
	id        string
	timestamp int64
	body      []byte // nil: no body
}

type signedCallKey struct{}

// sign sets the three headers on h for a request whose body is body.
func (c *signedCall) sign(h http.Header, body []byte) {
	h.Set(headerWebhookID, c.id)
	h.Set(headerWebhookTimestamp, strconv.FormatInt(c.timestamp, 10))
	h.Set(headerWebhookSignature, c.signer.signature(c.id, c.timestamp, body))
}

// resign signs a redirected request: a 307 or 308 resends the body, a 301,
// 302 or 303 turns the request into a GET without one, and the signature
// must cover what is sent.
func resign(req *http.Request) {
	c, ok := req.Context().Value(signedCallKey{}).(*signedCall)
	if !ok {
		return
	}
	var body []byte
	if req.Body != nil && req.Body != http.NoBody {
		body = c.body
	}
	c.sign(req.Header, body)
}

func withSignedCall(ctx context.Context, c *signedCall) context.Context {
	return context.WithValue(ctx, signedCallKey{}, c)
}
