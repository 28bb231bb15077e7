// Package natsconn connects a service to NATS the same way everywhere:
// reconnect forever, log connection changes without credentials.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/semver"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// DefaultURL is used when NATS_URL is unset.
const DefaultURL = settings.DefaultNATSURL

// unreachableLogEvery spaces the "cannot reach NATS" warnings.
const unreachableLogEvery = 10 * time.Second

// PublishAsyncTimeout is how long an async publish waits for its ack before
// it fails and frees its pending slot. Callers wait less (the ingest's
// EFFECTS_PUBLISH_TIMEOUT); this bounds what nobody waits for any more.
const PublishAsyncTimeout = 30 * time.Second

// MinServerVersion is the oldest nats-server the services run against.
// Before 2.10 a server ignores the reason of a terminate (+TERM <reason>) and
// redelivers the message, so an effect that failed for good would run again
// every ack wait, forever; 2.10 also brought consumers with several filter
// subjects. The README states it; every service checks it on connecting.
const MinServerVersion = "2.10.0"

// ErrServerTooOld is wrapped by the error of a connection to a nats-server
// older than [MinServerVersion].
var ErrServerTooOld = errors.New("nats-server is too old")

// CheckServerVersion returns an error wrapping [ErrServerTooOld] when version
// (as a server reports it in INFO, e.g. "2.9.10" or "2.11.0-RC.1") is older
// than [MinServerVersion], or cannot be read.
func CheckServerVersion(version string) error {
	v := "v" + strings.TrimPrefix(strings.TrimSpace(version), "v")
	if !semver.IsValid(v) {
		return fmt.Errorf("%w: cannot read its version %q; need %s or later", ErrServerTooOld, version, MinServerVersion)
	}
	if semver.Compare(v, "v"+MinServerVersion) < 0 {
		return fmt.Errorf("%w: it is %s, the effects services need %s or later "+
			"(older servers ignore the reason of a terminate and redeliver failed effects forever); "+
			"upgrade the server", ErrServerTooOld, version, MinServerVersion)
	}
	return nil
}

// refused holds, per connection closed by the version check, why: Ready
// reports it. onRefused holds the callbacks [OnRefused] registered.
var refused, onRefused sync.Map // *nats.Conn -> error, func(error)

// OnRefused arranges for f to be called (once, from another goroutine) if
// nc is closed later because it reached a server older than
// [MinServerVersion] (NATS was down at start, or a reconnect found an older
// server); at once if that already happened. A service cancels its run with
// it, so that it stops with the reason rather than run on without NATS.
func OnRefused(nc *nats.Conn, f func(error)) {
	onRefused.Store(nc, f)
	if err, ok := refused.Load(nc); ok {
		if f, ok := onRefused.LoadAndDelete(nc); ok {
			go f.(func(error))(err.(error))
		}
	}
}

// checkServer closes nc when the server it is connected to is too old. It
// does nothing unless nc is connected: the connect handler also runs
// (asynchronously) for a connection made at once, maybe only once it is
// draining or closed, when the server's version reads "".
func checkServer(nc *nats.Conn, logger *slog.Logger) error {
	version := nc.ConnectedServerVersion() // "" unless connected
	if version == "" {
		return nil
	}
	err := CheckServerVersion(version)
	if err == nil {
		return nil
	}
	err = fmt.Errorf("%s: %w", Redact(nc.ConnectedUrl()), err)
	refused.Store(nc, err)
	logger.Error("refusing the NATS server; the connection is closed", "error", err)
	nc.Close()
	if f, ok := onRefused.LoadAndDelete(nc); ok {
		go f.(func(error))(err)
	}
	return err
}

// Connect dials url and returns the connection and a JetStream context whose
// async publishes may have up to maxPending acks outstanding. A server older
// than [MinServerVersion] is refused: Connect returns an error wrapping
// [ErrServerTooOld] when it is the one answering now, and a connection that
// reaches such a server later (NATS was down at start, or a reconnect found
// an older server) is closed, which [Ready] reports.
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
			if checkServer(c, logger) == nil {
				logger.Info("nats reconnected", "server", Redact(c.ConnectedUrl()))
			}
		}),
		// Called for the first connection, whether made at once or
		// later (RetryOnFailedConnect).
		nats.ConnectHandler(func(c *nats.Conn) {
			if checkServer(c, logger) == nil {
				logger.Info("nats connected", "server", Redact(c.ConnectedUrl()))
			}
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
	if nc.IsConnected() {
		if err := checkServer(nc, logger); err != nil {
			return nil, nil, err
		}
	}
	// The connect handler runs the same check asynchronously for a
	// connection made at once; when it wins, nc is closed before the check
	// above sees it connected. Its verdict is in refused (stored before the
	// close), so Connect refuses the server either way.
	if err, ok := refused.Load(nc); ok {
		return nil, nil, err.(error)
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
		p = strings.TrimSpace(p)
		// nats.go reads a server without a scheme as nats://<server>, so
		// "user:password@host" has credentials too (url.Parse alone would
		// take "user" for a scheme and show the password).
		implicit := !strings.Contains(p, "://")
		if implicit {
			p = "nats://" + p
		}
		u, err := url.Parse(p)
		switch {
		case err != nil:
			parts[i] = "(unparsable url)"
		case u.User != nil:
			u.User = url.User("redacted")
			parts[i] = u.String()
			if implicit {
				parts[i] = strings.TrimPrefix(parts[i], "nats://")
			}
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

// SettingsFromEnv reads [Settings] through the shared reader
// ([settings.NATSURL], [settings.Streams]); r collects any error.
func SettingsFromEnv(r *envconfig.Reader) Settings {
	return Settings{URL: settings.NATSURL(r), Streams: settings.Streams(r)}
}

// Ready is a readiness check: the connection is up.
func Ready(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if err, ok := refused.Load(nc); ok {
			return err.(error)
		}
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
