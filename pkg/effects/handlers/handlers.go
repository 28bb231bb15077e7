package handlers

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/pkg/effects"
)

// The kinds [Register] registers.
const (
	KindEcho        = "echo"
	KindHTTPRequest = "http_request"
)

// The environment variables [ConfigFromEnv] reads.
const (
	// EnvHTTPAllow lists the hosts http_request may reach, comma-separated
	// "host" or "host:port" entries. Default: empty, which allows none.
	EnvHTTPAllow = "EFFECTS_HTTP_ALLOW"
	// EnvHTTPTimeout is the timeout of a request whose payload has no
	// timeout_ms, as a Go duration. Default: 30s.
	EnvHTTPTimeout = "EFFECTS_HTTP_TIMEOUT"
	// EnvHTTPMaxResponseBytes caps how much of a response body is read.
	// Default: 262144 (256 KiB), so that the completion fits in NATS's default
	// 1 MiB max_payload even when escaping a text body doubles it or more.
	EnvHTTPMaxResponseBytes = "EFFECTS_HTTP_MAX_RESPONSE_BYTES"
)

// Config configures the built-in handlers.
type Config struct {
	// HTTP configures http_request.
	HTTP HTTPConfig
	// Email configures email; with no SMTPURL it is not registered.
	Email EmailConfig
	// Blob configures blob_put; with no Buckets it is not registered.
	Blob BlobConfig
}

// ConfigFromEnv reads the built-ins' configuration through lookup (like
// os.LookupEnv): EFFECTS_HTTP_ALLOW (default empty: no host allowed),
// EFFECTS_HTTP_TIMEOUT (default 30s), EFFECTS_HTTP_MAX_RESPONSE_BYTES
// (default 262144) and EFFECTS_HTTP_SIGNING_SECRET (default empty: requests
// are not signed). A nil lookup reads the process environment, which is how
// a dispatcher outside this module calls it. The error names the variable
// that is wrong.
func ConfigFromEnv(lookup func(string) (string, bool)) (Config, error) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	env := map[string]string{}
	for _, k := range []string{
		EnvHTTPAllow, EnvHTTPTimeout, EnvHTTPMaxResponseBytes, EnvHTTPSigningSecret,
		EnvSMTPURL, EnvEmailFrom, EnvEmailFromAllow, EnvEmailToAllow, EnvSMTPTimeout,
		EnvS3Buckets, EnvS3Endpoint, EnvS3MaxBytes, EnvS3Timeout,
	} {
		if v, ok := lookup(k); ok {
			env[k] = v
		}
	}
	r := envconfig.FromMap(env)
	cfg := Config{HTTP: HTTPConfig{
		Allow:            r.List(EnvHTTPAllow),
		DefaultTimeout:   r.Duration(EnvHTTPTimeout, DefaultHTTPTimeout),
		MaxResponseBytes: int64(r.Int(EnvHTTPMaxResponseBytes, DefaultMaxResponseBytes)),
		// Secret: an error about it names the variable, never the value.
		SigningSecrets: splitSigningSecrets(r.Secret(EnvHTTPSigningSecret)),
	}}
	cfg.Email = emailConfigFromEnv(r)
	cfg.Blob = blobConfigFromEnv(r)
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	// Check here as well as in NewHTTPRequest, so that the error names the
	// variable an operator has to fix rather than a struct field.
	if _, err := parseAllowList(cfg.HTTP.Allow); err != nil {
		return Config{}, fmt.Errorf("%s=%q: %w", EnvHTTPAllow, strings.Join(cfg.HTTP.Allow, ","), err)
	}
	if cfg.HTTP.DefaultTimeout <= 0 {
		return Config{}, fmt.Errorf("%s=%q: want a positive duration such as 30s", EnvHTTPTimeout, cfg.HTTP.DefaultTimeout)
	}
	if cfg.HTTP.MaxResponseBytes <= 0 {
		return Config{}, fmt.Errorf("%s=%d: want a positive number of bytes", EnvHTTPMaxResponseBytes, cfg.HTTP.MaxResponseBytes)
	}
	if _, err := newWebhookSigner(cfg.HTTP.SigningSecrets); err != nil {
		return Config{}, fmt.Errorf("%s: %w", EnvHTTPSigningSecret, err)
	}
	if err := checkEmailConfig(cfg.Email); err != nil {
		return Config{}, err
	}
	if err := checkBlobConfig(cfg.Blob); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Register registers the built-in handlers in reg: "echo" and
// "http_request" always, "email" when cfg.Email has an SMTP URL and
// "blob_put" when cfg.Blob lists buckets (opt-in: without settings their
// kinds have no consumer here). It registers nothing when it returns an
// error (an invalid configuration, or a kind already taken in reg).
func Register(reg *effects.Registry, cfg Config) error {
	httpRequest, err := NewHTTPRequest(cfg.HTTP)
	if err != nil {
		return err
	}
	builtins := map[string]effects.HandlerFunc{KindEcho: Echo, KindHTTPRequest: httpRequest}
	// Opt-in: without settings the kind has no consumer here.
	if cfg.Email.SMTPURL != "" {
		if builtins[KindEmail], err = NewEmail(cfg.Email); err != nil {
			return err
		}
	}
	if len(cfg.Blob.Buckets) > 0 {
		if builtins[KindBlobPut], err = NewBlobPut(cfg.Blob); err != nil {
			return err
		}
	}
	kinds := slices.Sorted(maps.Keys(builtins))
	for _, kind := range kinds {
		if _, taken := reg.Lookup(kind); taken {
			return fmt.Errorf("handlers: a handler for kind %q is already registered", kind)
		}
	}
	for _, kind := range kinds {
		if err := reg.Register(kind, builtins[kind]); err != nil {
			return err
		}
	}
	return nil
}

// Echo is the "echo" handler: its completion is the effect's payload,
// unchanged, as a json.RawMessage.
func Echo(_ context.Context, e effects.Effect) (any, error) {
	// effects.MarshalResult passes a json.RawMessage through untouched, so
	// the completion holds exactly the bytes the row's payload held.
	return e.Payload, nil
}

var _ effects.HandlerFunc = Echo
