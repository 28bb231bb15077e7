// Package settings reads the settings every effects service shares, in one
// place and with one meaning for every value, so that one environment means
// the same thing to the ingest, the dispatcher and the completer.
//
// The rule for each of them: unset or empty takes the default; a value given
// is used exactly as given, or refused with an error naming the variable.
// Zero is never a silent "default": for these settings it has no sensible
// meaning (a shutdown without any grace, streams keeping messages for no
// time, no duplicate window, no replicas), so an explicit 0 is an error that
// says to unset the variable for the default.
package settings

import (
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/pkg/effects"
)

// Defaults of the shared settings.
const (
	DefaultNATSURL         = "nats://127.0.0.1:4222"
	DefaultLogLevel        = "info"
	DefaultShutdownTimeout = 30 * time.Second
	DefaultStreamMaxAge    = 168 * time.Hour
	DefaultDuplicateWindow = 2 * time.Minute
	DefaultStreamReplicas  = 1
)

// Shared are the settings every service reads.
type Shared struct {
	// NATSURL is NATS_URL, default nats://127.0.0.1:4222: the server or
	// comma-separated servers. It may hold credentials; log it only
	// through natsconn.Redact.
	NATSURL string
	// AdminAddr is EFFECTS_ADMIN_ADDR; the default is the service's own
	// (:9090 ingest, :9091 dispatcher, :9092 completer).
	AdminAddr string
	// LogLevel is EFFECTS_LOG_LEVEL, default info.
	LogLevel string
	// ShutdownTimeout is EFFECTS_SHUTDOWN_TIMEOUT, default 30s: after
	// SIGTERM, how long work in flight may go on before what is left is
	// handed back to JetStream (or, in the ingest, the open requests are
	// cut and Hasura retries them).
	ShutdownTimeout time.Duration
	// Streams are EFFECTS_STREAM_MAX_AGE (default 168h),
	// EFFECTS_DUPLICATE_WINDOW (default 2m) and EFFECTS_STREAM_REPLICAS
	// (default 1). A service uses them only to create a stream that does
	// not exist; `completer migrate` applies them to existing streams.
	Streams effects.StreamOptions
	// Pprof is EFFECTS_PPROF, default off: when on, the admin address also
	// serves Go's profiles under /debug/pprof/ (CPU, heap, allocations,
	// goroutines, mutex and block). Off by default because a profile
	// shows internals and a CPU profile costs CPU while it runs.
	Pprof bool
}

// Read reads every shared setting; r collects the first error.
// defaultAdminAddr is the service's own admin address.
func Read(r *envconfig.Reader, defaultAdminAddr string) Shared {
	return Shared{
		NATSURL:         NATSURL(r),
		AdminAddr:       r.String("EFFECTS_ADMIN_ADDR", defaultAdminAddr),
		LogLevel:        r.String("EFFECTS_LOG_LEVEL", DefaultLogLevel),
		ShutdownTimeout: ShutdownTimeout(r),
		Streams:         Streams(r),
		Pprof:           r.Bool("EFFECTS_PPROF", false),
	}
}

// NATSURL reads NATS_URL.
func NATSURL(r *envconfig.Reader) string { return r.String("NATS_URL", DefaultNATSURL) }

// ShutdownTimeout reads EFFECTS_SHUTDOWN_TIMEOUT: a positive duration.
func ShutdownTimeout(r *envconfig.Reader) time.Duration {
	return r.PositiveDuration("EFFECTS_SHUTDOWN_TIMEOUT", DefaultShutdownTimeout)
}

// Streams reads the stream settings and checks them together (the duplicate
// window may not exceed the max age).
func Streams(r *envconfig.Reader) effects.StreamOptions {
	o := effects.StreamOptions{
		MaxAge:     r.PositiveDuration("EFFECTS_STREAM_MAX_AGE", DefaultStreamMaxAge),
		Duplicates: r.PositiveDuration("EFFECTS_DUPLICATE_WINDOW", DefaultDuplicateWindow),
		Replicas:   r.IntRange("EFFECTS_STREAM_REPLICAS", DefaultStreamReplicas, 1, 5),
	}
	if r.Err() == nil && o.Duplicates > o.MaxAge {
		r.Fail("EFFECTS_DUPLICATE_WINDOW", o.Duplicates.String(), "want at most EFFECTS_STREAM_MAX_AGE ("+o.MaxAge.String()+")")
	}
	return o
}
