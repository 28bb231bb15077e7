// Package natsconn connects a service to NATS the same way everywhere:
// reconnect forever, log connection changes without credentials.
package natsconn

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/pkg/effects"
)

// DefaultURL is used when NATS_URL is unset.
const DefaultURL = "nats://127.0.0.1:4222"

// unreachableLogEvery spaces the "cannot reach NATS" warnings.
const unreachableLogEvery = 10 * time.Second

// PublishAsyncTimeout is how long an async publish waits for its ack before
// it fails and frees its pending slot. Callers wait less (the ingest's
// EFFECTS_PUBLISH_TIMEOUT); this bounds what nobody waits for any more.
const PublishAsyncTimeout = 30 * time.Second

// Connect dials url and returns the connection and a JetStream context whose
// async publishes may have up to maxPending acks outstanding.
func Connect(rawURL, name string, logger *slog.Logger, maxPending int) (*nats.Conn, jetstream.JetStream, error) {
	if maxPending <= 0 {
		maxPending = 4000
	}
	// While NATS cannot be reached (at start, or after a disconnect), say
	// so, naming the server, every 10s: otherwise the only trace is the
	// callers' "context deadline exceeded".
	var lastUnreachable atomic.Int64
	nc, err := nats.Connect(rawURL,
		nats.Name(name),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			now := time.Now().UnixNano()
			if last := lastUnreachable.Load(); now-last >= int64(unreachableLogEvery) && lastUnreachable.CompareAndSwap(last, now) {
				logger.Warn("cannot reach NATS; retrying (logged at most every 10s)", "nats_url", Redact(rawURL), "error", err)
			}
		}),
		nats.ConnectHandler(func(c *nats.Conn) {
			if lastUnreachable.Load() != 0 {
				logger.Info("nats connected", "server", Redact(c.ConnectedUrl()))
			}
		}),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(64<<20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil: our own Close or Drain
				logger.Warn("nats disconnected", "nats_url", Redact(rawURL), "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			logger.Info("nats reconnected", "server", Redact(c.ConnectedUrl()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			logger.Warn("nats async error", "subject", subject, "error", err)
		}),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", Redact(rawURL), err)
	}
	// Without an async-publish timeout, an ack that never comes (a server
	// that lost the message without a disconnect) would hold its pending
	// slot forever; once maxPending are held, every publish stalls.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending),
		jetstream.WithPublishAsyncTimeout(PublishAsyncTimeout))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// Redact returns the URL, or comma-separated URLs, with any user info
// (user, password, token) replaced, for logs and errors.
func Redact(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		switch {
		case err != nil:
			parts[i] = "(unparsable url)"
		case u.User != nil:
			u.User = url.User("redacted")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

// Settings are the NATS settings every service reads.
type Settings struct {
	// URL is NATS_URL, default nats://127.0.0.1:4222. It may hold
	// credentials and is only ever logged through [Redact].
	URL string
	// Streams are EFFECTS_STREAM_MAX_AGE (default 168h),
	// EFFECTS_DUPLICATE_WINDOW (default 2m) and EFFECTS_STREAM_REPLICAS
	// (default 1).
	Streams effects.StreamOptions
}

// SettingsFromEnv reads [Settings]; r collects any error.
func SettingsFromEnv(r *envconfig.Reader) Settings {
	s := Settings{
		URL: r.String("NATS_URL", DefaultURL),
		Streams: effects.StreamOptions{
			MaxAge:     r.Duration("EFFECTS_STREAM_MAX_AGE", 168*time.Hour),
			Duplicates: r.Duration("EFFECTS_DUPLICATE_WINDOW", 2*time.Minute),
			Replicas:   r.Int("EFFECTS_STREAM_REPLICAS", 1),
		},
	}
	return s
}

// Ready is a readiness check: the connection is up.
func Ready(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("nats connection is %s", st)
		}
		return nil
	}
}

// Close drains nc — what is buffered is flushed, subscriptions finish — and
// waits up to timeout for it to close; then closes it anyway.
func Close(nc *nats.Conn, timeout time.Duration) {
	closed := nc.StatusChanged(nats.CLOSED)
	if nc.Drain() != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(timeout):
		nc.Close()
	}
}
