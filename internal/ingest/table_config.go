package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// Sources, the values of EFFECTS_SOURCE.
const (
	SourceWebhook = "webhook"
	SourceTable   = "table"
)

// Sources reads EFFECTS_SOURCE: "webhook" (the default), "table", or both
// comma-separated. It reports which are on.
func Sources(r *envconfig.Reader) (webhook, table bool, err error) {
	raw := r.String("EFFECTS_SOURCE", SourceWebhook)
	for _, s := range strings.Split(raw, ",") {
		switch strings.TrimSpace(s) {
		case SourceWebhook:
			webhook = true
		case SourceTable:
			table = true
		default:
			return false, false, fmt.Errorf("EFFECTS_SOURCE=%q: want webhook, table, or webhook,table", raw)
		}
	}
	return webhook, table, nil
}

// Defaults of [TableConfig].
const (
	DefaultTableBatchSize    = 500
	DefaultTableWorkers      = 2
	DefaultTablePollInterval = time.Second
	DefaultTableRetryMax     = 10 * time.Second
	DefaultBacklogInterval   = 5 * time.Second
)

// TableConfig configures the table source. The zero value of a field means
// its default (see [TableConfig.WithDefaults]); DatabaseURL has none.
type TableConfig struct {
	// DatabaseURL is DATABASE_URL, required. It is never logged.
	DatabaseURL string

	// Table is EFFECTS_TABLE, default "effects": name or schema.name.
	Table string

	// BatchSize is EFFECTS_TABLE_BATCH_SIZE, default 500: most rows read
	// and published per batch; the cursor is written once per batch. A
	// crash publishes at most the batches in flight again.
	BatchSize int

	// Workers is EFFECTS_TABLE_WORKERS, default 2: batches in flight at
	// once in the ingest that owns the cursor, so that one batch is read
	// while another waits for its acks.
	Workers int

	// PollInterval is EFFECTS_TABLE_POLL_INTERVAL, default 1s: how often an
	// idle source looks for rows without being notified. Notifications only
	// make it sooner; the poll is what guarantees no committed row waits
	// longer.
	PollInterval time.Duration

	// RetryMax is EFFECTS_TABLE_RETRY_MAX, default 10s: the longest wait
	// between tries while PostgreSQL or NATS fails.
	RetryMax time.Duration

	// BacklogInterval is how often the backlog gauges are refreshed,
	// default 5s (not a setting).
	BacklogInterval time.Duration

	// MaxPayloadBytes is EFFECTS_MAX_PAYLOAD_BYTES, default 524288: a row
	// whose payload is longer is failed with the reason.
	MaxPayloadBytes int

	// PublishTimeout is EFFECTS_PUBLISH_TIMEOUT, default 5s: how long a
	// batch waits for its acks; a batch not acked whole by then is not
	// passed by the cursor and is published again.
	PublishTimeout time.Duration

	// ShutdownTimeout is EFFECTS_SHUTDOWN_TIMEOUT, default 30s: how long a
	// stop waits for the batches in flight to be acked and the cursor
	// written.
	ShutdownTimeout time.Duration

	// Kinds is EFFECTS_KINDS, default empty (every valid kind): a row of
	// another kind is failed with the reason, as the webhook does.
	Kinds []string

	// Streams are the stream settings applied at start (see [Config]).
	Streams effects.StreamOptions

	// NoFastBatch is EFFECTS_TABLE_FAST_BATCH=false (default true: fast
	// batches are used where the server and the effects stream allow
	// them): publish every batch message by message.
	NoFastBatch bool
}

// TableConfigFromEnv reads the table source's configuration from r, fills in
// the defaults and validates it. An error names the variable that is wrong.
func TableConfigFromEnv(r *envconfig.Reader) (TableConfig, error) {
	c := TableConfig{
		DatabaseURL:     r.Secret("DATABASE_URL"),
		Table:           r.String("EFFECTS_TABLE", schema.DefaultTable),
		BatchSize:       r.Int("EFFECTS_TABLE_BATCH_SIZE", DefaultTableBatchSize),
		Workers:         r.Int("EFFECTS_TABLE_WORKERS", DefaultTableWorkers),
		PollInterval:    r.Duration("EFFECTS_TABLE_POLL_INTERVAL", DefaultTablePollInterval),
		RetryMax:        r.Duration("EFFECTS_TABLE_RETRY_MAX", DefaultTableRetryMax),
		MaxPayloadBytes: r.Int("EFFECTS_MAX_PAYLOAD_BYTES", DefaultMaxPayloadBytes),
		PublishTimeout:  r.Duration("EFFECTS_PUBLISH_TIMEOUT", DefaultPublishTimeout),
		ShutdownTimeout: settings.ShutdownTimeout(r),
		Kinds:           r.List("EFFECTS_KINDS"),
		Streams:         settings.Streams(r),
		NoFastBatch:     !r.Bool("EFFECTS_TABLE_FAST_BATCH", true),
	}
	if err := r.Err(); err != nil {
		return TableConfig{}, err
	}
	if c.DatabaseURL == "" {
		return TableConfig{}, errors.New("DATABASE_URL is not set: EFFECTS_SOURCE=table reads the effects table, " +
			"want the URL of its PostgreSQL, e.g. postgres://user:password@host:5432/db")
	}
	// The reader supplied the defaults of unset variables, so a zero here
	// was set explicitly and is checked as given, not defaulted.
	c.BacklogInterval = DefaultBacklogInterval
	c.Streams = c.Streams.WithDefaults()
	if err := c.Validate(); err != nil {
		return TableConfig{}, err
	}
	return c, nil
}

// WithDefaults returns a copy with every zero field set to its default.
func (c TableConfig) WithDefaults() TableConfig {
	if c.Table == "" {
		c.Table = schema.DefaultTable
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultTableBatchSize
	}
	if c.Workers == 0 {
		c.Workers = DefaultTableWorkers
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultTablePollInterval
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultTableRetryMax
	}
	if c.BacklogInterval == 0 {
		c.BacklogInterval = DefaultBacklogInterval
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	c.Streams = c.Streams.WithDefaults()
	return c
}

// Validate reports the first setting that is wrong, by its variable name.
func (c TableConfig) Validate() error {
	if _, err := schema.ParseTable(c.Table); err != nil {
		return fmt.Errorf("EFFECTS_TABLE: %w", err)
	}
	switch {
	case c.DatabaseURL == "":
		return errors.New("DATABASE_URL is not set")
	case c.BatchSize <= 0 || c.BatchSize > 10000:
		return fmt.Errorf("EFFECTS_TABLE_BATCH_SIZE=%d: want 1 to 10000", c.BatchSize)
	case c.Workers <= 0 || c.Workers > 64:
		return fmt.Errorf("EFFECTS_TABLE_WORKERS=%d: want 1 to 64", c.Workers)
	case c.PollInterval <= 0:
		return fmt.Errorf("EFFECTS_TABLE_POLL_INTERVAL=%s: want a positive duration", c.PollInterval)
	case c.RetryMax <= 0:
		return fmt.Errorf("EFFECTS_TABLE_RETRY_MAX=%s: want a positive duration", c.RetryMax)
	case c.BacklogInterval <= 0:
		return fmt.Errorf("backlog interval %s: want a positive duration", c.BacklogInterval)
	case c.MaxPayloadBytes <= 0:
		return fmt.Errorf("EFFECTS_MAX_PAYLOAD_BYTES=%d: want a positive number of bytes", c.MaxPayloadBytes)
	case c.PublishTimeout <= 0:
		return fmt.Errorf("EFFECTS_PUBLISH_TIMEOUT=%s: want a positive duration", c.PublishTimeout)
	case c.ShutdownTimeout <= 0:
		return fmt.Errorf("EFFECTS_SHUTDOWN_TIMEOUT=%s: want a positive duration", c.ShutdownTimeout)
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

// LogValue lets a config be logged without DATABASE_URL.
func (c TableConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("table", c.Table),
		slog.Int("batch_size", c.BatchSize),
		slog.Int("workers", c.Workers),
		slog.String("poll_interval", c.PollInterval.String()),
		slog.String("retry_max", c.RetryMax.String()),
		slog.Int("max_payload_bytes", c.MaxPayloadBytes),
		slog.String("publish_timeout", c.PublishTimeout.String()),
		slog.String("shutdown_timeout", c.ShutdownTimeout.String()),
		slog.Bool("fast_batch", !c.NoFastBatch),
	)
}

// String keeps DATABASE_URL out of fmt output.
func (c TableConfig) String() string {
	return fmt.Sprintf("ingest.TableConfig{Table:%q BatchSize:%d Workers:%d PollInterval:%s}",
		c.Table, c.BatchSize, c.Workers, c.PollInterval)
}

// GoString keeps DATABASE_URL out of %#v.
func (c TableConfig) GoString() string { return c.String() }

// OpenTablePool returns a pool on cfg.DatabaseURL for the checks at start
// and the backlog gauges (the owner of the cursor, and a replica waiting to
// be, hold one more connection of their own, for the advisory lock). It does not connect yet (the source
// waits for PostgreSQL by itself); it fails only on a URL it cannot parse,
// and its error never contains the URL.
func OpenTablePool(cfg TableConfig) (*pgxpool.Pool, error) {
	cfg = cfg.WithDefaults()
	pc, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, errors.New("DATABASE_URL: not a PostgreSQL URL or connection string pgx can parse")
	}
	if need := int32(cfg.Workers + 1); pc.MaxConns < need {
		pc.MaxConns = need
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, errors.New("DATABASE_URL: cannot make a connection pool from it")
	}
	return pool, nil
}
