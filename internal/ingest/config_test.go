package ingest_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/pkg/effects"
)

func TestConfigFromEnvDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := ingest.ConfigFromEnv(envconfig.FromMap(map[string]string{
		"EFFECTS_WEBHOOK_SECRET": "  s3cret\n", // as a secret file with a newline mounts it
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := ingest.Config{
		HTTPAddr:              ":8080",
		WebhookSecret:         "s3cret",
		MaxPayloadBytes:       512 << 10,
		MaxBodyBytes:          4 << 20,
		PublishTimeout:        5 * time.Second,
		RetryAfter:            5 * time.Second,
		ShutdownTimeout:       30 * time.Second,
		ConsumerCheckInterval: time.Minute,
		ReadHeaderTimeout:     10 * time.Second,
		ReadTimeout:           time.Minute,
		Streams:               effects.StreamOptions{MaxAge: 168 * time.Hour, Duplicates: 2 * time.Minute, Replicas: 1},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config\n%+v\nwant\n%+v", cfg, want)
	}
	if cfg.WebhookSecret != want.WebhookSecret {
		t.Errorf("secret not trimmed")
	}
}

func TestConfigFromEnvReadsEveryVariable(t *testing.T) {
	t.Parallel()
	cfg, err := ingest.ConfigFromEnv(envconfig.FromMap(map[string]string{
		"EFFECTS_HTTP_ADDR":               "127.0.0.1:18080",
		"EFFECTS_INSECURE_NO_SECRET":      "1",
		"EFFECTS_MAX_PAYLOAD_BYTES":       "1000",
		"EFFECTS_MAX_BODY_BYTES":          "100000",
		"EFFECTS_PUBLISH_TIMEOUT":         "250ms",
		"EFFECTS_RETRY_AFTER":             "30s",
		"EFFECTS_SHUTDOWN_TIMEOUT":        "1m",
		"EFFECTS_STREAM_MAX_AGE":          "24h",
		"EFFECTS_DUPLICATE_WINDOW":        "10m",
		"EFFECTS_STREAM_REPLICAS":         "3",
		"EFFECTS_KINDS":                   "send_email, http_request",
		"EFFECTS_CONSUMER_CHECK_INTERVAL": "10s",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := ingest.Config{
		HTTPAddr:              "127.0.0.1:18080",
		InsecureNoSecret:      true,
		MaxPayloadBytes:       1000,
		MaxBodyBytes:          100000,
		PublishTimeout:        250 * time.Millisecond,
		RetryAfter:            30 * time.Second,
		ShutdownTimeout:       time.Minute,
		ConsumerCheckInterval: 10 * time.Second,
		ReadHeaderTimeout:     10 * time.Second,
		ReadTimeout:           time.Minute,
		Streams:               effects.StreamOptions{MaxAge: 24 * time.Hour, Duplicates: 10 * time.Minute, Replicas: 3},
		Kinds:                 []string{"send_email", "http_request"},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config\n%+v\nwant\n%+v", cfg, want)
	}
}

func TestConfigBodyLimitFollowsALargePayloadLimit(t *testing.T) {
	t.Parallel()
	cfg, err := ingest.ConfigFromEnv(envconfig.FromMap(map[string]string{
		"EFFECTS_WEBHOOK_SECRET":    "s",
		"EFFECTS_MAX_PAYLOAD_BYTES": "8388608",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if want := 8388608 + ingest.BodyOverhead; cfg.MaxBodyBytes != want {
		t.Errorf("MaxBodyBytes %d, want %d", cfg.MaxBodyBytes, want)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"no secret", map[string]string{}, []string{"EFFECTS_WEBHOOK_SECRET", "EFFECTS_INSECURE_NO_SECRET=1"}},
		{"a blank secret", map[string]string{"EFFECTS_WEBHOOK_SECRET": " \n"}, []string{"EFFECTS_WEBHOOK_SECRET"}},
		{"insecure off", map[string]string{"EFFECTS_INSECURE_NO_SECRET": "0"}, []string{"EFFECTS_WEBHOOK_SECRET"}},
		{"insecure not a bool", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_INSECURE_NO_SECRET": "maybe"}, []string{"EFFECTS_INSECURE_NO_SECRET"}},
		{"body below payload + 64 KiB", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_MAX_BODY_BYTES": "524288"},
			[]string{"EFFECTS_MAX_BODY_BYTES=524288", "EFFECTS_MAX_PAYLOAD_BYTES (524288) + 65536"}},
		{"body just below", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_MAX_PAYLOAD_BYTES": "1000", "EFFECTS_MAX_BODY_BYTES": "66535"},
			[]string{"EFFECTS_MAX_BODY_BYTES=66535"}},
		{"negative payload limit", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_MAX_PAYLOAD_BYTES": "-1"}, []string{"EFFECTS_MAX_PAYLOAD_BYTES"}},
		{"payload limit not a number", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_MAX_PAYLOAD_BYTES": "512KiB"}, []string{"EFFECTS_MAX_PAYLOAD_BYTES"}},
		{"publish timeout without a unit", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_PUBLISH_TIMEOUT": "5"}, []string{"EFFECTS_PUBLISH_TIMEOUT"}},
		{"negative publish timeout", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_PUBLISH_TIMEOUT": "-1s"}, []string{"EFFECTS_PUBLISH_TIMEOUT"}},
		{"negative retry after", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_RETRY_AFTER": "-5s"}, []string{"EFFECTS_RETRY_AFTER"}},
		{"negative shutdown timeout", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_SHUTDOWN_TIMEOUT": "-1s"}, []string{"EFFECTS_SHUTDOWN_TIMEOUT"}},
		{"zero shutdown timeout: an error, never the default", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_SHUTDOWN_TIMEOUT": "0"},
			[]string{`EFFECTS_SHUTDOWN_TIMEOUT="0"`, "unset the variable for the default (30s)"}},
		{"zero stream max age", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_STREAM_MAX_AGE": "0s"}, []string{"EFFECTS_STREAM_MAX_AGE"}},
		{"zero replicas", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_STREAM_REPLICAS": "0"}, []string{"EFFECTS_STREAM_REPLICAS"}},
		{"a kind in the allow-list that is not valid", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_KINDS": "send_email,a.b"},
			[]string{"EFFECTS_KINDS", "a.b"}},
		{"duplicate window over max age", map[string]string{"EFFECTS_WEBHOOK_SECRET": "s", "EFFECTS_STREAM_MAX_AGE": "1m", "EFFECTS_DUPLICATE_WINDOW": "2m"},
			[]string{"EFFECTS_DUPLICATE_WINDOW"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ingest.ConfigFromEnv(envconfig.FromMap(tc.env))
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestConfigNeverShowsTheSecret(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-do-not-print"
	cfg := ingest.Config{WebhookSecret: secret}.WithDefaults()
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "config", cfg)
	for _, out := range []string{
		fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%q", cfg), logged.String(),
	} {
		if strings.Contains(out, secret) {
			t.Errorf("the secret is in %s", out)
		}
	}
	if !strings.Contains(logged.String(), `"secret_set":true`) {
		t.Errorf("the log does not say a secret is set: %s", logged.String())
	}
}
