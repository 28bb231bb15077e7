package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// Defaults of [Config].
const (
	DefaultHTTPAddr        = ":8080"
	DefaultMaxPayloadBytes = 512 << 10
	DefaultMaxBodyBytes    = 4 << 20
	DefaultPublishTimeout  = 5 * time.Second
	DefaultRetryAfter      = 5 * time.Second
	DefaultShutdownTimeout = settings.DefaultShutdownTimeout
	// DefaultConsumerCheckInterval is how often the ingest looks for kinds
	// with effects that no consumer takes.
	DefaultConsumerCheckInterval = time.Minute
	// DefaultReadHeaderTimeout and DefaultReadTimeout bound a client that
	// stalls: Hasura holds a delivery for timeout_sec (default 60s).
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = time.Minute
	// MaxHeaderBytes bounds a request's headers: Hasura sends a handful
	// (content type, user agent, the secret, trace headers), and a client
	// sending more is answered 431 without the server holding a megabyte
	// (net/http's default) for it.
	MaxHeaderBytes = 64 << 10

	// BodyOverhead is how much larger than EFFECTS_MAX_PAYLOAD_BYTES the
	// request body limit must at least be: a Hasura body carries the row's
	// other columns, the old row of an update, session variables and
	// delivery metadata around the payload.
	BodyOverhead = 64 << 10
)

// Config is the ingest's configuration. The zero value of a field means its
// default (see [Config.WithDefaults]); WebhookSecret has none.
type Config struct {
	// HTTPAddr is where the webhook listens: EFFECTS_HTTP_ADDR, default ":8080".
	HTTPAddr string

	// WebhookSecret is EFFECTS_WEBHOOK_SECRET, no default: every request
	// must carry it in the X-Effects-Secret header. Surrounding whitespace
	// is dropped, since HTTP drops it from header values too (a secret
	// file with a trailing newline would otherwise never match). It is
	// never logged.
	WebhookSecret string

	// InsecureNoSecret is EFFECTS_INSECURE_NO_SECRET, default false. Only
	// when it is set does the ingest start without a WebhookSecret, and
	// then it accepts events from anyone who can reach it.
	InsecureNoSecret bool

	// MaxPayloadBytes is EFFECTS_MAX_PAYLOAD_BYTES, default 524288
	// (512 KiB): a row whose payload is longer is failed at once instead
	// of published, since it could never be delivered.
	MaxPayloadBytes int

	// MaxBodyBytes is EFFECTS_MAX_BODY_BYTES, default 4194304 (4 MiB) or
	// MaxPayloadBytes + 64 KiB, whichever is larger: a longer request body
	// is refused with 413 before it is decoded. It must be at least
	// MaxPayloadBytes + 64 KiB, so that a row just over the payload limit
	// is failed with a reason rather than bounced.
	MaxBodyBytes int

	// PublishTimeout is EFFECTS_PUBLISH_TIMEOUT, default 5s: how long a
	// request waits for JetStream to acknowledge its message before it is
	// answered 503.
	PublishTimeout time.Duration

	// RetryAfter is EFFECTS_RETRY_AFTER, default 5s: the Retry-After of a
	// 503, rounded up to whole seconds (at least 1), which Hasura honours
	// even after its retries are used up.
	RetryAfter time.Duration

	// ShutdownTimeout is EFFECTS_SHUTDOWN_TIMEOUT, default 30s: how long a
	// stop waits for requests in flight to get their acks and replies.
	ShutdownTimeout time.Duration

	// ConsumerCheckInterval is EFFECTS_CONSUMER_CHECK_INTERVAL, default 1m:
	// how often the ingest compares the kinds with effects in the EFFECTS
	// stream against the consumers' filter subjects, and reports the kinds
	// no consumer takes (metric effects_kinds_without_consumer, and a log
	// line when that set changes).
	ConsumerCheckInterval time.Duration

	// Kinds is EFFECTS_KINDS, default empty (every valid kind): when set,
	// the only kinds the ingest publishes; a row of any other kind is
	// failed at once with the reason, instead of waiting out the stream's
	// retention with nobody to handle it.
	Kinds []string

	// ReadHeaderTimeout and ReadTimeout bound how long a client may take
	// to send a request's headers, and the whole request with its body:
	// default 10s and 1m. A client slower than that (a stalled connection,
	// a slowloris) is cut off rather than holding a connection for ever;
	// one cut off in its body is answered 408. They are not read from the
	// environment: Hasura sends a body in one go, and these only bound
	// clients that stall.
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration

	// Streams are the settings of a stream the ingest creates because it
	// does not exist yet (an existing stream is never changed):
	// EFFECTS_STREAM_MAX_AGE (default 168h), EFFECTS_DUPLICATE_WINDOW
	// (default 2m) and EFFECTS_STREAM_REPLICAS (default 1), read by
	// [settings.Streams].
	Streams effects.StreamOptions
}

// ConfigFromEnv reads the configuration from r, fills in the defaults and
// validates it. An error names the variable that is wrong.
func ConfigFromEnv(r *envconfig.Reader) (Config, error) {
	cfg := Config{
		HTTPAddr:              r.String("EFFECTS_HTTP_ADDR", DefaultHTTPAddr),
		WebhookSecret:         strings.TrimSpace(r.Secret("EFFECTS_WEBHOOK_SECRET")),
		InsecureNoSecret:      r.Bool("EFFECTS_INSECURE_NO_SECRET", false),
		MaxPayloadBytes:       r.Int("EFFECTS_MAX_PAYLOAD_BYTES", DefaultMaxPayloadBytes),
		MaxBodyBytes:          r.Int("EFFECTS_MAX_BODY_BYTES", 0), // 0: derived from MaxPayloadBytes
		PublishTimeout:        r.Duration("EFFECTS_PUBLISH_TIMEOUT", DefaultPublishTimeout),
		RetryAfter:            r.Duration("EFFECTS_RETRY_AFTER", DefaultRetryAfter),
		ShutdownTimeout:       settings.ShutdownTimeout(r),
		Kinds:                 r.List("EFFECTS_KINDS"),
		ConsumerCheckInterval: r.PositiveDuration("EFFECTS_CONSUMER_CHECK_INTERVAL", DefaultConsumerCheckInterval),
		Streams:               settings.Streams(r),
	}
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// WithDefaults returns a copy with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.HTTPAddr == "" {
		c.HTTPAddr = DefaultHTTPAddr
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = max(DefaultMaxBodyBytes, c.MaxPayloadBytes+BodyOverhead)
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.RetryAfter == 0 {
		c.RetryAfter = DefaultRetryAfter
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.ConsumerCheckInterval == 0 {
		c.ConsumerCheckInterval = DefaultConsumerCheckInterval
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	c.Streams = c.Streams.WithDefaults()
	return c
}

// Validate reports the first setting that is wrong, by its variable name.
// Call it on a config that went through [Config.WithDefaults].
func (c Config) Validate() error {
	switch {
	case c.HTTPAddr == "":
		return errors.New("EFFECTS_HTTP_ADDR is empty: want a listen address such as :8080")
	case c.WebhookSecret == "" && !c.InsecureNoSecret:
		return errors.New("EFFECTS_WEBHOOK_SECRET is not set: set it to the secret the Hasura event trigger " +
			"sends in X-Effects-Secret, or set EFFECTS_INSECURE_NO_SECRET=1 to accept events from anyone")
	case c.MaxPayloadBytes <= 0:
		return fmt.Errorf("EFFECTS_MAX_PAYLOAD_BYTES=%d: want a positive number of bytes", c.MaxPayloadBytes)
	case c.MaxBodyBytes < c.MaxPayloadBytes+BodyOverhead:
		return fmt.Errorf("EFFECTS_MAX_BODY_BYTES=%d: want at least EFFECTS_MAX_PAYLOAD_BYTES (%d) + %d, "+
			"so that a body carrying a payload at the limit is not refused before its row can be failed",
			c.MaxBodyBytes, c.MaxPayloadBytes, BodyOverhead)
	case c.PublishTimeout <= 0:
		return fmt.Errorf("EFFECTS_PUBLISH_TIMEOUT=%s: want a positive duration", c.PublishTimeout)
	case c.RetryAfter <= 0:
		return fmt.Errorf("EFFECTS_RETRY_AFTER=%s: want a positive duration", c.RetryAfter)
	case c.ShutdownTimeout <= 0:
		return fmt.Errorf("EFFECTS_SHUTDOWN_TIMEOUT=%s: want a positive duration", c.ShutdownTimeout)
	case c.ConsumerCheckInterval <= 0:
		return fmt.Errorf("EFFECTS_CONSUMER_CHECK_INTERVAL=%s: want a positive duration", c.ConsumerCheckInterval)
	case c.ReadHeaderTimeout <= 0 || c.ReadTimeout < c.ReadHeaderTimeout:
		return fmt.Errorf("ingest: read header timeout %s, read timeout %s: want 0 < header timeout <= read timeout",
			c.ReadHeaderTimeout, c.ReadTimeout)
	}
	for _, k := range c.Kinds {
		if err := effects.ValidateKind(k); err != nil {
			return fmt.Errorf("EFFECTS_KINDS: %w", err)
		}
	}
	if err := c.Streams.Validate(); err != nil {
		return fmt.Errorf("EFFECTS_STREAM_MAX_AGE, EFFECTS_DUPLICATE_WINDOW or EFFECTS_STREAM_REPLICAS: %w", err)
	}
	return nil
}

// retryAfterSeconds is the Retry-After header value: Hasura reads an integer
// number of seconds, so round up and never say 0 (which would mean "now").
func (c Config) retryAfterSeconds() string {
	secs := int64((c.RetryAfter + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(secs, 1), 10)
}

// LogValue lets a config be logged without its secret.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("http_addr", c.HTTPAddr),
		slog.Bool("secret_set", c.WebhookSecret != ""),
		slog.Bool("insecure_no_secret", c.InsecureNoSecret),
		slog.Int("max_payload_bytes", c.MaxPayloadBytes),
		slog.Int("max_body_bytes", c.MaxBodyBytes),
		slog.Duration("publish_timeout", c.PublishTimeout),
		slog.Duration("retry_after", c.RetryAfter),
		slog.Duration("shutdown_timeout", c.ShutdownTimeout),
		slog.Duration("consumer_check_interval", c.ConsumerCheckInterval),
		slog.Any("kinds", c.Kinds),
	)
}

// GoString keeps the secret out of %#v.
func (c Config) GoString() string { return c.String() }

// String keeps the secret out of fmt output (%v, %+v) too.
func (c Config) String() string {
	return fmt.Sprintf("ingest.Config{HTTPAddr:%q WebhookSecret:%s InsecureNoSecret:%t MaxPayloadBytes:%d "+
		"MaxBodyBytes:%d PublishTimeout:%s RetryAfter:%s ShutdownTimeout:%s ConsumerCheckInterval:%s Kinds:%q Streams:%+v}",
		c.HTTPAddr, redacted(c.WebhookSecret), c.InsecureNoSecret, c.MaxPayloadBytes,
		c.MaxBodyBytes, c.PublishTimeout, c.RetryAfter, c.ShutdownTimeout, c.ConsumerCheckInterval, c.Kinds, c.Streams)
}

func redacted(secret string) string {
	if secret == "" {
		return `""`
	}
	return "[redacted]"
}
