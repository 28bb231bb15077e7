package handlers

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

func TestEchoReturnsPayloadUnchanged(t *testing.T) {
	t.Parallel()
	// Odd spacing and key order: nothing may be re-encoded.
	payload := json.RawMessage("{\"b\": 1,  \"a\" :[1, 2.50, \"<x>\"]}\n")
	out, err := Echo(t.Context(), effects.Effect{ID: testEffectID, Kind: KindEcho, Payload: payload})
	if err != nil {
		t.Fatalf("Echo: %v", err)
	}
	raw, ok := out.(json.RawMessage)
	if !ok {
		t.Fatalf("Echo returned %T, want json.RawMessage", out)
	}
	if !bytes.Equal(raw, payload) {
		t.Errorf("Echo = %q, want %q", raw, payload)
	}
	// And so does the completion the dispatcher publishes.
	if got := completion(t, out); got != string(payload) {
		t.Errorf("completion = %q, want %q", got, payload)
	}
}

func TestConfigFromEnvDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := ConfigFromEnv(lookupIn(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := HTTPConfig{DefaultTimeout: 30 * time.Second, MaxResponseBytes: 256 << 10}
	if cfg.HTTP.Allow != nil || cfg.HTTP.DefaultTimeout != want.DefaultTimeout || cfg.HTTP.MaxResponseBytes != want.MaxResponseBytes {
		t.Errorf("ConfigFromEnv() = %+v, want %+v", cfg.HTTP, want)
	}
}

func TestConfigFromEnvValues(t *testing.T) {
	t.Parallel()
	cfg, err := ConfigFromEnv(lookupIn(map[string]string{
		EnvHTTPAllow:            " api.example.com, hooks.example.com:8443 ,,[::1]",
		EnvHTTPTimeout:          "5s",
		EnvHTTPMaxResponseBytes: "4096",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cfg.HTTP.Allow, " "), "api.example.com hooks.example.com:8443 [::1]"; got != want {
		t.Errorf("Allow = %q, want %q", got, want)
	}
	if cfg.HTTP.DefaultTimeout != 5*time.Second || cfg.HTTP.MaxResponseBytes != 4096 {
		t.Errorf("got %+v", cfg.HTTP)
	}
}

func TestConfigFromEnvErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{EnvHTTPAllow: "api.example.com,http://internal"}, `EFFECTS_HTTP_ALLOW="api.example.com,http://internal": entry "http://internal": want host or host:port, not a URL`},
		{map[string]string{EnvHTTPAllow: "::1"}, `EFFECTS_HTTP_ALLOW="::1": entry "::1": an IPv6 address must be in brackets`},
		{map[string]string{EnvHTTPTimeout: "soon"}, `EFFECTS_HTTP_TIMEOUT="soon"`},
		{map[string]string{EnvHTTPTimeout: "0s"}, `EFFECTS_HTTP_TIMEOUT="0s": want a positive duration`},
		{map[string]string{EnvHTTPMaxResponseBytes: "1MB"}, `EFFECTS_HTTP_MAX_RESPONSE_BYTES="1MB"`},
		{map[string]string{EnvHTTPMaxResponseBytes: "-1"}, `EFFECTS_HTTP_MAX_RESPONSE_BYTES=-1: want a positive number of bytes`},
	} {
		_, err := ConfigFromEnv(lookupIn(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ConfigFromEnv(%v) err = %v, want one containing %q", tc.env, err, tc.want)
		}
	}
}

// Not parallel: t.Setenv changes the process environment, and Go runs the
// parallel tests only after this one.
func TestConfigFromEnvNilReadsProcessEnvironment(t *testing.T) {
	t.Setenv(EnvHTTPAllow, "from-env.example.com")
	t.Setenv(EnvHTTPTimeout, "")
	t.Setenv(EnvHTTPMaxResponseBytes, "")
	cfg, err := ConfigFromEnv(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.HTTP.Allow) != 1 || cfg.HTTP.Allow[0] != "from-env.example.com" {
		t.Errorf("Allow = %q", cfg.HTTP.Allow)
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()
	reg := effects.NewRegistry()
	if err := Register(reg, Config{}); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if got := strings.Join(reg.Kinds(), " "); got != "echo http_request" {
		t.Errorf("kinds = %q", got)
	}
	// A second time every kind is taken: an error, not a panic.
	if err := Register(reg, Config{}); err == nil || !strings.Contains(err.Error(), `kind "echo" is already registered`) {
		t.Errorf("second Register err = %v", err)
	}
}

func TestRegisterIsAllOrNothing(t *testing.T) {
	t.Parallel()
	reg := effects.NewRegistry()
	reg.Handle(KindHTTPRequest, Echo)
	if err := Register(reg, Config{}); err == nil {
		t.Fatal("Register succeeded with http_request taken")
	}
	if _, ok := reg.Lookup(KindEcho); ok {
		t.Error("Register registered echo although it failed")
	}

	reg = effects.NewRegistry()
	err := Register(reg, Config{HTTP: HTTPConfig{Allow: []string{"bad/entry"}}})
	if err == nil || !strings.Contains(err.Error(), "EFFECTS_HTTP_ALLOW") {
		t.Fatalf("Register with a bad allow entry err = %v", err)
	}
	if kinds := reg.Kinds(); len(kinds) != 0 {
		t.Errorf("Register registered %q although it failed", kinds)
	}
}

func lookupIn(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}
