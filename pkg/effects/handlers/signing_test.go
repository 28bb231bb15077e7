package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/effects-run/effects/pkg/effects"
)

// Two secrets of the Standard Webhooks form: the specification's test
// vector's and one of 32 bytes.
const (
	specSecret  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	otherSecret = "whsec_q3d1Jm2vQ0yPZpB3Zq4wqvG8d3m4Ck6FQ6p9tH2xY0E="
)

// The Standard Webhooks specification's published test vector.
func TestWebhookSignatureTestVector(t *testing.T) {
	t.Parallel()
	s, err := newWebhookSigner(SigningSecrets{specSecret})
	if err != nil {
		t.Fatal(err)
	}
	got := s.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Errorf("signature = %q, want %q", got, want)
	}
}

// verifyingServer is a receiver that checks every request with the Standard
// Webhooks reference library (an implementation independent of ours), with
// its replay tolerance, and records what it saw.
type verified struct {
	received
	err error // the library's verdict
}

func verifyingServer(t *testing.T, secret string, reply http.HandlerFunc) (string, <-chan verified) {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan verified, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- verified{
			received: received{method: r.Method, header: r.Header.Clone(), body: string(body)},
			err:      wh.Verify(body, r.Header),
		}
		reply(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, got
}

func signedHandler(t *testing.T, secrets ...string) *httpRequester {
	t.Helper()
	h, err := newHTTPRequester(HTTPConfig{Allow: []string{"127.0.0.1"}, SigningSecrets: secrets})
	if err != nil {
		t.Fatalf("newHTTPRequester: %v", err)
	}
	return h
}

func ok200(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }

// A signed call verifies with the reference library: the body signed is the
// body sent, byte for byte (the payload's spacing kept), webhook-id is the
// effect's id and webhook-timestamp the time of the attempt, not of the
// effect (an effect an hour old still passes the 5-minute replay check).
func TestSignedRequestVerifies(t *testing.T) {
	t.Parallel()
	url, got := verifyingServer(t, specSecret, ok200)
	h := signedHandler(t, specSecret)
	for _, tc := range []struct {
		name, payload, body string
	}{
		{"JSON body as written", `{"url": "` + url + `", "body": {"test": 2432232314,  "b": [1, 2]}}`, `{"test": 2432232314,  "b": [1, 2]}`},
		{"no body", `{"url": "` + url + `", "method": "GET"}`, ``},
		{"string body", `{"url": "` + url + `", "body": "caf\u00e9"}`, `"caf\u00e9"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := effects.Effect{ID: testEffectID, Kind: KindHTTPRequest, Payload: json.RawMessage(tc.payload),
				CreatedAt: time.Now().Add(-time.Hour)}
			before := time.Now().Unix()
			if _, err := h.handle(context.Background(), e); err != nil {
				t.Fatalf("handle: %v", err)
			}
			after := time.Now().Unix()
			r := <-got
			if r.err != nil {
				t.Fatalf("the reference library refuses the request: %v\nheaders %v\nbody %q", r.err, r.header, r.body)
			}
			if r.body != tc.body {
				t.Errorf("body sent %q, want %q", r.body, tc.body)
			}
			if id := r.header.Get("webhook-id"); id != testEffectID {
				t.Errorf("webhook-id %q, want the effect id %s", id, testEffectID)
			}
			ts, err := strconv.ParseInt(r.header.Get("webhook-timestamp"), 10, 64)
			if err != nil || ts < before || ts > after {
				t.Errorf("webhook-timestamp %q, want the attempt's time in [%d, %d]", r.header.Get("webhook-timestamp"), before, after)
			}
			if sig := r.header.Get("webhook-signature"); strings.Count(sig, "v1,") != 1 || strings.Contains(sig, " ") {
				t.Errorf("webhook-signature %q, want one v1 signature", sig)
			}
		})
	}
}

// Every attempt of an effect carries the same webhook-id and a timestamp of
// its own, and each verifies.
func TestSignedRequestAttempts(t *testing.T) {
	t.Parallel()
	url, got := verifyingServer(t, specSecret, ok200)
	h := signedHandler(t, specSecret)
	clock := time.Now()
	h.now = func() time.Time { return clock }
	e := httpEffect(t, map[string]any{"url": url, "body": map[string]int{"n": 1}})
	var stamps []string
	for range 2 {
		if _, err := h.handle(context.Background(), e); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.err != nil {
			t.Fatalf("refused: %v", r.err)
		}
		if r.header.Get("webhook-id") != testEffectID {
			t.Errorf("webhook-id %q", r.header.Get("webhook-id"))
		}
		stamps = append(stamps, r.header.Get("webhook-timestamp"))
		clock = clock.Add(90 * time.Second)
	}
	if stamps[0] == stamps[1] {
		t.Errorf("both attempts have webhook-timestamp %s; each attempt has its own", stamps[0])
	}
}

// With two secrets (a rotation) the header carries two signatures; a
// receiver that knows either secret accepts the call, one that knows
// neither refuses it.
func TestSignedRequestRotation(t *testing.T) {
	t.Parallel()
	srv, got := testServer(t, ok200)
	h := signedHandler(t, otherSecret, specSecret)
	if _, err := h.handle(context.Background(), httpEffect(t, map[string]any{"url": srv.URL, "body": []int{1}})); err != nil {
		t.Fatal(err)
	}
	r := <-got
	sig := r.header.Get("webhook-signature")
	if parts := strings.Split(sig, " "); len(parts) != 2 || !strings.HasPrefix(parts[0], "v1,") || !strings.HasPrefix(parts[1], "v1,") {
		t.Fatalf("webhook-signature %q, want two space-separated v1 signatures", sig)
	}
	for _, secret := range []string{specSecret, otherSecret} {
		wh, err := standardwebhooks.NewWebhook(secret)
		if err != nil {
			t.Fatal(err)
		}
		if err := wh.Verify([]byte(r.body), r.header); err != nil {
			t.Errorf("a receiver with one of the secrets refuses: %v", err)
		}
	}
	stranger, _ := standardwebhooks.NewWebhook("whsec_" + strings.Repeat("A", 32))
	if err := stranger.Verify([]byte(r.body), r.header); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Errorf("a receiver with another secret: %v, want ErrNoMatchingSignature", err)
	}
}

// A redirect is signed over what it sends: a 307 resends the body, a 303
// turns a POST into a GET without one. The receiver at the end verifies
// either way.
func TestSignedRequestRedirects(t *testing.T) {
	t.Parallel()
	url, got := verifyingServer(t, specSecret, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/307":
			http.Redirect(w, r, "/end", http.StatusTemporaryRedirect)
		case "/303":
			http.Redirect(w, r, "/end", http.StatusSeeOther)
		default:
			w.WriteHeader(http.StatusOK)
		}
	})
	h := signedHandler(t, specSecret)
	for _, tc := range []struct{ path, method, body string }{
		{"/307", http.MethodPost, `{"a": 1}`},
		{"/303", http.MethodGet, ``},
	} {
		e := effects.Effect{ID: testEffectID, Kind: KindHTTPRequest,
			Payload: json.RawMessage(`{"url": "` + url + tc.path + `", "body": {"a": 1}}`)}
		if _, err := h.handle(context.Background(), e); err != nil {
			t.Fatalf("%s: %v", tc.path, err)
		}
		first, end := <-got, <-got
		if first.err != nil {
			t.Errorf("%s: first request refused: %v", tc.path, first.err)
		}
		if end.method != tc.method || end.body != tc.body {
			t.Errorf("%s: redirected request %s %q, want %s %q", tc.path, end.method, end.body, tc.method, tc.body)
		}
		if end.err != nil {
			t.Errorf("%s: the redirected request is refused: %v", tc.path, end.err)
		}
	}
}

// Without a secret nothing changes: no Standard Webhooks header is added,
// and a payload may still set them itself (say, to forward a call signed
// elsewhere).
func TestUnsignedRequestHasNoWebhookHeaders(t *testing.T) {
	t.Parallel()
	srv, got := testServer(t, ok200)
	h := newHTTPHandler(t, HTTPConfig{})
	if _, err := h(context.Background(), httpEffect(t, map[string]any{"url": srv.URL, "body": 1})); err != nil {
		t.Fatal(err)
	}
	r := <-got
	for _, name := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
		if v, ok := r.header[http.CanonicalHeaderKey(name)]; ok {
			t.Errorf("unsigned request has %s: %q", name, v)
		}
	}
	if _, err := h(context.Background(), httpEffect(t, map[string]any{"url": srv.URL,
		"headers": map[string]string{"webhook-signature": "v1,forwarded"}})); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.header.Get("webhook-signature") != "v1,forwarded" {
		t.Errorf("a payload's own webhook-signature became %q", r.header.Get("webhook-signature"))
	}
}

// With signing, a payload that sets a Standard Webhooks header, or an effect
// without a UUID id, fails at once and sends nothing.
func TestSignedRequestRefusals(t *testing.T) {
	t.Parallel()
	srv, got := testServer(t, ok200)
	h := signedHandler(t, specSecret)
	_, err := h.handle(context.Background(), httpEffect(t, map[string]any{"url": srv.URL,
		"headers": map[string]string{"WEBHOOK-ID": "mine"}}))
	mustFail(t, err, true, `may not set "Webhook-Id"`, EnvHTTPSigningSecret)
	e := httpEffect(t, map[string]any{"url": srv.URL})
	e.ID = "a.b"
	_, err = h.handle(context.Background(), e)
	mustFail(t, err, true, "webhook-id", "UUID")
	select {
	case r := <-got:
		t.Errorf("a request was sent: %+v", r)
	default:
	}
}

// A secret that is not valid stops NewHTTPRequest and ConfigFromEnv (so the
// dispatcher does not start) with an error that names the variable and says
// what is wrong, and never shows the secret or a part of it.
func TestSigningSecretErrors(t *testing.T) {
	t.Parallel()
	key24 := "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	for _, tc := range []struct{ value, want string }{
		{key24, `does not start with "whsec_"`},
		{"whsec_" + key24 + "!", "not standard base64"},
		{"whsec_" + key24[:30], "not standard base64"}, // cut short: bad padding
		{"whsec_", "the key is 0 bytes long"},
		{"whsec_c2hvcnQta2V5LXNlY3JldA==", "the key is 16 bytes long; the Standard Webhooks specification wants 24 to 64"},
		{"whsec_" + strings.Repeat("QUJD", 22), "the key is 66 bytes long"},
		{specSecret + ", nope-" + key24, `secret 2 of 2 does not start with "whsec_"`},
	} {
		_, err := ConfigFromEnv(lookupIn(map[string]string{EnvHTTPSigningSecret: tc.value}))
		if err == nil || !strings.Contains(err.Error(), EnvHTTPSigningSecret) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ConfigFromEnv(%s=...) err = %v, want one naming the variable and saying %q", EnvHTTPSigningSecret, err, tc.want)
			continue
		}
		for _, part := range []string{key24, key24[:12], key24[12:24], "c2hvcnQta2V5", "QUJDQUJD"} {
			if strings.Contains(err.Error(), part) {
				t.Errorf("error %q shows the secret", err)
			}
		}
		_, err = NewHTTPRequest(HTTPConfig{SigningSecrets: splitSigningSecrets(tc.value)})
		if err == nil || !strings.Contains(err.Error(), EnvHTTPSigningSecret) || strings.Contains(err.Error(), key24[:12]) {
			t.Errorf("NewHTTPRequest err = %v", err)
		}
	}
}

func TestSigningSecretsFromEnv(t *testing.T) {
	t.Parallel()
	for _, v := range []string{
		specSecret + "," + otherSecret,
		" " + specSecret + " ,\n" + otherSecret + " ",
		specSecret + " " + otherSecret,
	} {
		cfg, err := ConfigFromEnv(lookupIn(map[string]string{EnvHTTPSigningSecret: v}))
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if got := cfg.HTTP.SigningSecrets; len(got) != 2 || got[0] != specSecret || got[1] != otherSecret {
			t.Errorf("%q: %d secrets", v, len(got))
		}
		// A configuration printed into a log hides them.
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			if s := fmt.Sprintf(verb, cfg); strings.Contains(s, "MfKQ9r8G") || strings.Contains(s, "q3d1Jm2v") {
				t.Errorf("fmt %s of the configuration shows a secret: %s", verb, s)
			}
		}
	}
	cfg, err := ConfigFromEnv(lookupIn(map[string]string{EnvHTTPSigningSecret: " , "}))
	if err != nil || cfg.HTTP.SigningSecrets != nil {
		t.Errorf("blank setting: %v, %d secrets; want none (unsigned)", err, len(cfg.HTTP.SigningSecrets))
	}
}
