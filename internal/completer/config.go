package completer

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// ConsumerName is the durable JetStream consumer the completer reads
// completions through. Every completer instance shares it, so they split
// the work; it is never deleted, so nothing published while no completer
// runs is lost.
const ConsumerName = "effects-completer"

// MaxBatchSize bounds EFFECTS_COMPLETER_BATCH_SIZE: a larger batch makes one
// statement hold row locks longer without writing faster.
const MaxBatchSize = 10000

// MaxWriters bounds EFFECTS_COMPLETER_WRITERS: each writer holds a
// PostgreSQL connection and a batch of unacked messages.
const MaxWriters = 16

// Config is the completer's configuration. The zero value of each field means
// its default; [Config.WithDefaults] fills them in.
type Config struct {
	// DatabaseURL is DATABASE_URL, required: the PostgreSQL holding the
	// table. It may hold a password and is never logged or put in an error.
	// [New] does not use it (it is given a pool); cmd/completer opens the
	// pool with it.
	DatabaseURL string
	// Table is EFFECTS_TABLE, default "effects": the table completions are
	// written to, "name" or "schema.name" (see [schema.ParseTable]).
	Table string
	// BatchSize is EFFECTS_COMPLETER_BATCH_SIZE, default 500: the most
	// completions written by one statement.
	BatchSize int
	// Linger is EFFECTS_COMPLETER_LINGER, default 20ms: how long a writer
	// that is behind waits for more completions before writing a batch that
	// is not full. A writer is behind when the completions it took without
	// waiting, or the last batch any writer took (in the last second), number
	// at least LingerFrom; otherwise it writes what it has at once, so a
	// completion at low load is never delayed. Under load batches grow, and
	// a fuller batch costs PostgreSQL less per row. A negative value (the
	// environment's 0) never lingers.
	Linger time.Duration
	// LingerFrom is the batch size from which a writer counts as behind
	// and lingers; default 8 (at most BatchSize). It has no environment
	// variable. 1 lingers after every first completion.
	LingerFrom int
	// Writers is EFFECTS_COMPLETER_WRITERS, default 2: how many batches are
	// written at once. With one, the completer waits for every statement
	// before it settles the batch and takes the next; with two, one batch is
	// collected, parsed and acked while another is in PostgreSQL, and
	// PostgreSQL works on two backends. Concurrent batches are safe: the
	// rules are rechecked under the row lock.
	Writers int
	// AckWait is EFFECTS_COMPLETER_ACK_WAIT, default 30s: the consumer's
	// AckWait, after which JetStream redelivers a completion that was not
	// acknowledged. Batches being written or retried are kept from it with
	// InProgress.
	AckWait time.Duration
	// RetryMax is EFFECTS_COMPLETER_RETRY_MAX, default 10s: the longest wait
	// between two tries of a batch while PostgreSQL fails. Waits start at
	// 100ms (or RetryMax if smaller) and double.
	RetryMax time.Duration
	// WriteTimeout is EFFECTS_COMPLETER_WRITE_TIMEOUT, default 10s: how long
	// one batch statement may take before it is cancelled and retried, so a
	// connection that hangs does not stall the completer.
	WriteTimeout time.Duration
	// ShutdownTimeout is EFFECTS_SHUTDOWN_TIMEOUT, default 30s: after a stop
	// is asked for, how long the completer goes on writing the completions it
	// already holds. What it still holds then is handed back to JetStream.
	ShutdownTimeout time.Duration
	// Streams are the stream settings: [effects.EnsureStreams] creates a
	// missing stream with them, and `completer migrate` applies them to
	// existing ones ([effects.ApplyStreams]). Read by [settings.Streams].
	Streams effects.StreamOptions
}

// Defaults.
const (
	DefaultBatchSize       = 500
	DefaultLinger          = 20 * time.Millisecond
	DefaultLingerFrom      = 8
	DefaultWriters         = 2
	DefaultAckWait         = 30 * time.Second
	DefaultRetryMax        = 10 * time.Second
	DefaultWriteTimeout    = 10 * time.Second
	DefaultShutdownTimeout = settings.DefaultShutdownTimeout
)

// ConfigFromEnv reads the completer's environment variables. It fails when
// DATABASE_URL is unset, naming the variable and never showing a value.
func ConfigFromEnv(r *envconfig.Reader) (Config, error) {
	c := Config{
		DatabaseURL:     r.Secret("DATABASE_URL"),
		Table:           r.String("EFFECTS_TABLE", schema.DefaultTable),
		BatchSize:       r.Int("EFFECTS_COMPLETER_BATCH_SIZE", DefaultBatchSize),
		Linger:          r.Duration("EFFECTS_COMPLETER_LINGER", DefaultLinger),
		Writers:         r.Int("EFFECTS_COMPLETER_WRITERS", DefaultWriters),
		AckWait:         r.Duration("EFFECTS_COMPLETER_ACK_WAIT", DefaultAckWait),
		RetryMax:        r.Duration("EFFECTS_COMPLETER_RETRY_MAX", DefaultRetryMax),
		WriteTimeout:    r.Duration("EFFECTS_COMPLETER_WRITE_TIMEOUT", DefaultWriteTimeout),
		ShutdownTimeout: settings.ShutdownTimeout(r),
		Streams:         settings.Streams(r),
	}
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	if c.DatabaseURL == "" {
		return Config{}, errors.New("DATABASE_URL is not set: want the URL of the PostgreSQL holding the effects table, e.g. postgres://user:password@host:5432/db")
	}
	switch {
	case c.Linger < 0:
		return Config{}, fmt.Errorf("EFFECTS_COMPLETER_LINGER=%s: must not be negative (0 never lingers)", c.Linger)
	case c.Linger == 0:
		c.Linger = NoLinger
	}
	// The reader already supplied the defaults of unset variables, so a zero
	// left here was set explicitly and is checked as given, not defaulted.
	c.Streams = c.Streams.WithDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// NoLinger as [Config.Linger] makes every writer write what it has at once.
const NoLinger time.Duration = -1

// WithDefaults returns a copy with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Table == "" {
		c.Table = schema.DefaultTable
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.Writers == 0 {
		c.Writers = DefaultWriters
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.LingerFrom == 0 {
		c.LingerFrom = min(DefaultLingerFrom, c.BatchSize)
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	c.Streams = c.Streams.WithDefaults()
	return c
}

// Validate names the variable that is wrong. It does not require
// DatabaseURL, which only [ConfigFromEnv]'s caller uses.
func (c Config) Validate() error {
	if _, err := schema.ParseTable(c.Table); err != nil {
		return fmt.Errorf("EFFECTS_TABLE=%q: %w", c.Table, err)
	}
	switch {
	case c.BatchSize < 1 || c.BatchSize > MaxBatchSize:
		return fmt.Errorf("EFFECTS_COMPLETER_BATCH_SIZE=%d: want 1 to %d", c.BatchSize, MaxBatchSize)
	case c.Writers < 1 || c.Writers > MaxWriters:
		return fmt.Errorf("EFFECTS_COMPLETER_WRITERS=%d: want 1 to %d", c.Writers, MaxWriters)
	case c.LingerFrom < 0:
		return fmt.Errorf("LingerFrom=%d: must not be negative", c.LingerFrom)
	case c.AckWait < time.Second:
		return fmt.Errorf("EFFECTS_COMPLETER_ACK_WAIT=%s: want at least 1s", c.AckWait)
	case c.Linger >= c.AckWait/2:
		return fmt.Errorf("EFFECTS_COMPLETER_LINGER=%s: want less than half of EFFECTS_COMPLETER_ACK_WAIT (%s)", c.Linger, c.AckWait)
	case c.RetryMax <= 0:
		return fmt.Errorf("EFFECTS_COMPLETER_RETRY_MAX=%s: must be positive", c.RetryMax)
	case c.WriteTimeout <= 0:
		return fmt.Errorf("EFFECTS_COMPLETER_WRITE_TIMEOUT=%s: must be positive", c.WriteTimeout)
	case c.ShutdownTimeout <= 0:
		return fmt.Errorf("EFFECTS_SHUTDOWN_TIMEOUT=%s: must be positive", c.ShutdownTimeout)
	}
	return c.Streams.Validate()
}

// LogValue leaves DatabaseURL out, so logging a Config cannot leak a
// password.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("table", c.Table),
		slog.Int("batch_size", c.BatchSize),
		slog.Int("writers", c.Writers),
		slog.Duration("linger", max(0, c.Linger)),
		slog.Int("linger_from", c.LingerFrom),
		slog.Duration("ack_wait", c.AckWait),
		slog.Duration("retry_max", c.RetryMax),
		slog.Duration("write_timeout", c.WriteTimeout),
		slog.Duration("shutdown_timeout", c.ShutdownTimeout),
	)
}
