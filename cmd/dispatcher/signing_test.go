package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/effects-run/effects/internal/controlkv/controlkvtest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

const (
	// A secret being rotated out and its successor; the keys are not used
	// anywhere but here.
	oldSigningSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	newSigningSecret = "whsec_q3d1Jm2vQ0yPZpB3Zq4wqvG8d3m4Ck6FQ6p9tH2xY0E="
)

// TestSignedHTTPRequest runs the dispatcher with two signing secrets (a
// rotation) and a receiver that verifies every call with the Standard
// Webhooks reference library and fails the first one: both attempts
// verify, with either secret, and carry the effect's id as webhook-id; the
// effect succeeds; the secrets are not in the logs.
func TestSignedHTTPRequest(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)

	type call struct {
		id       string
		verified []error // per secret: old, new
	}
	var mu sync.Mutex
	var calls []call
	verifiers := make([]*standardwebhooks.Webhook, 0, 2)
	for _, s := range []string{oldSigningSecret, newSigningSecret} {
		wh, err := standardwebhooks.NewWebhook(s)
		if err != nil {
			t.Fatal(err)
		}
		verifiers = append(verifiers, wh)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c := call{id: r.Header.Get("webhook-id")}
		for _, wh := range verifiers {
			c.verified = append(c.verified, wh.Verify(body, r.Header))
		}
		mu.Lock()
		calls = append(calls, c)
		first := len(calls) == 1
		mu.Unlock()
		if first {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)

	p := testenv.StartProcess(t, selector, map[string]string{
		"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_HTTP_ALLOW": "127.0.0.1",
		"EFFECTS_RETRY_BASE":          "50ms",
		"EFFECTS_HTTP_SIGNING_SECRET": newSigningSecret + " " + oldSigningSecret,
	})
	waitReady(t, p, "http://"+p.LoopbackAddr(t, "starting", "admin_addr"))
	eff := publishEffect(t, js, "http_request", fmt.Sprintf(`{"url": %q, "body": {"order": 42,  "note": "spaced"}}`, srv.URL))
	var comp *effects.Completion
	p.WaitFor(t, "the http_request completion", func() bool {
		comp = lastCompletion(t, js, "http_request")
		return comp != nil && comp.EffectID == eff.id
	})
	if comp.Status != effects.StatusSucceeded || comp.Attempts != 2 {
		t.Errorf("completion %+v (error %s), want succeeded on attempt 2", comp, strDeref(comp.Error))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 {
		t.Fatalf("%d calls, want 2", len(calls))
	}
	for i, c := range calls {
		if c.id != eff.id {
			t.Errorf("call %d: webhook-id %q, want the effect id %s", i+1, c.id, eff.id)
		}
		for j, err := range c.verified {
			if err != nil {
				t.Errorf("call %d: a receiver with secret %d refuses it: %v", i+1, j+1, err)
			}
		}
	}
	stop(t, p)
	for _, s := range []string{oldSigningSecret, newSigningSecret} {
		if strings.Contains(p.Output(), strings.TrimPrefix(s, "whsec_")[:16]) {
			t.Errorf("the logs show a signing secret:\n%s", p.Output())
		}
	}
}

// A signing secret that is not valid stops the dispatcher at start (exit
// 2) with a "configuration" line naming the variable, never the secret.
func TestSigningSecretConfigErrors(t *testing.T) {
	t.Parallel()
	const key = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	for name, value := range map[string]string{
		"without whsec_": key,
		"bad base64":     "whsec_" + key[:31],
		"empty key":      "whsec_",
		"second secret":  newSigningSecret + "," + key,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := testenv.StartProcess(t, selector, map[string]string{
				"NATS_URL": "nats://127.0.0.1:1", "EFFECTS_ADMIN_ADDR": "127.0.0.1:0",
				"EFFECTS_HTTP_SIGNING_SECRET": value,
			})
			if code := p.Wait(t); code != 2 {
				t.Fatalf("exit %d, want 2\n%s", code, p.Output())
			}
			l := p.FindLog(t, "dispatcher", "configuration")
			if l == nil || !strings.Contains(fmt.Sprint(l["error"]), "EFFECTS_HTTP_SIGNING_SECRET") {
				t.Errorf("no \"configuration\" line naming EFFECTS_HTTP_SIGNING_SECRET\n%s", p.Output())
			}
			for _, part := range []string{key[:12], key[12:24], "q3d1Jm2vQ0yP"} {
				if strings.Contains(p.Output(), part) {
					t.Errorf("the output shows the secret:\n%s", p.Output())
				}
			}
		})
	}
}
