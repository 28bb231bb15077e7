package reconcile

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/schema"
)

// Config configures a [Reconciler].
type Config struct {
	// Table is EFFECTS_TABLE, default "effects".
	Table string
	// After is EFFECTS_RECONCILE_AFTER, default 15m; 0 turns the reconciler
	// off. A row still pending this long after it was created, and not
	// handed to JetStream in the last After, is published again when
	// nothing of its kind is waiting in JetStream (see the package comment).
	After time.Duration
	// Interval is the time between two passes; 0 means After/5, at least
	// 1s and at most 1m: a lost row is found within about After plus
	// Interval.
	Interval time.Duration
	// BatchSize is the most rows one transaction claims, default 100.
	BatchSize int
	// MaxPerPass bounds the rows one pass publishes, default 1000: after a
	// stream lost data the backlog is sent again at most this fast, so the
	// dispatchers see a ramp, not a flood.
	MaxPerPass int
	// PublishTimeout bounds the wait for JetStream's acks of one batch,
	// default 10s.
	PublishTimeout time.Duration
}

// Defaults.
const (
	DefaultAfter          = 15 * time.Minute
	DefaultBatchSize      = 100
	DefaultMaxPerPass     = 1000
	DefaultPublishTimeout = 10 * time.Second
)

// ConfigFromEnv reads EFFECTS_RECONCILE_AFTER for table.
func ConfigFromEnv(r *envconfig.Reader, table string) (Config, error) {
	c := Config{Table: table, After: r.Duration("EFFECTS_RECONCILE_AFTER", DefaultAfter)}
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	if err := c.WithDefaults().Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Enabled reports whether the reconciler runs at all.
func (c Config) Enabled() bool { return c.After > 0 }

// WithDefaults returns a copy with zero fields (other than After) set to
// their defaults.
func (c Config) WithDefaults() Config {
	if c.Table == "" {
		c.Table = schema.DefaultTable
	}
	if c.Interval == 0 {
		c.Interval = min(max(c.After/5, time.Second), time.Minute)
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxPerPass == 0 {
		c.MaxPerPass = DefaultMaxPerPass
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	return c
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if _, err := schema.ParseTable(c.Table); err != nil {
		return fmt.Errorf("EFFECTS_TABLE=%q: %w", c.Table, err)
	}
	switch {
	case c.After < 0:
		return fmt.Errorf("EFFECTS_RECONCILE_AFTER=%s: must not be negative (0 turns the reconciler off)", c.After)
	case c.After > 0 && c.After < time.Second:
		return fmt.Errorf("EFFECTS_RECONCILE_AFTER=%s: want at least 1s (or 0 to turn the reconciler off): a shorter age re-publishes effects that are merely being handled", c.After)
	case c.Interval < 0:
		return fmt.Errorf("reconcile interval %s: must be positive", c.Interval)
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return fmt.Errorf("reconcile batch size %d: want 1 to 10000", c.BatchSize)
	case c.MaxPerPass < 1:
		return fmt.Errorf("reconcile max per pass %d: must be positive", c.MaxPerPass)
	case c.PublishTimeout < 0:
		return fmt.Errorf("reconcile publish timeout %s: must be positive", c.PublishTimeout)
	}
	return nil
}

// LogValue is the configuration as the completer logs it.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("table", c.Table),
		slog.Duration("after", c.After),
		slog.Duration("interval", c.Interval),
		slog.Int("batch_size", c.BatchSize),
		slog.Int("max_per_pass", c.MaxPerPass),
	)
}
