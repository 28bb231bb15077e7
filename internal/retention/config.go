package retention

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/schema"
)

// Policy says how long rows in each final status are kept after they were
// completed. Zero keeps them forever, the default: the table is an audit
// trail, and throwing it away must be asked for. Pending rows are never
// removed, whatever the policy.
type Policy struct {
	// Succeeded is EFFECTS_RETAIN_SUCCEEDED, default 0 (forever).
	Succeeded time.Duration
	// Failed is EFFECTS_RETAIN_FAILED, default 0 (forever).
	Failed time.Duration
	// Cancelled is EFFECTS_RETAIN_CANCELLED, default 0 (forever): rows an
	// operator cancelled (effects cancel), measured from the cancel.
	Cancelled time.Duration
}

// Enabled reports whether any rows are ever removed.
func (p Policy) Enabled() bool { return p.Succeeded > 0 || p.Failed > 0 || p.Cancelled > 0 }

// String describes the policy for people: what the `effects retention`
// command shows and what the completer logs at start.
func (p Policy) String() string {
	return fmt.Sprintf("succeeded rows: %s; failed rows: %s; cancelled rows: %s; pending rows: kept until completed",
		keptFor(p.Succeeded), keptFor(p.Failed), keptFor(p.Cancelled))
}

func keptFor(d time.Duration) string {
	if d <= 0 {
		return "kept forever"
	}
	return "removed " + d.String() + " after completion"
}

// Validate names the variable that is wrong.
func (p Policy) Validate() error {
	switch {
	case p.Succeeded < 0:
		return fmt.Errorf("EFFECTS_RETAIN_SUCCEEDED=%s: must not be negative (0 or empty keeps succeeded rows forever)", p.Succeeded)
	case p.Failed < 0:
		return fmt.Errorf("EFFECTS_RETAIN_FAILED=%s: must not be negative (0 or empty keeps failed rows forever)", p.Failed)
	case p.Cancelled < 0:
		return fmt.Errorf("EFFECTS_RETAIN_CANCELLED=%s: must not be negative (0 or empty keeps cancelled rows forever)", p.Cancelled)
	}
	return nil
}

// Config configures the [Remover] a completer runs.
type Config struct {
	// Table is EFFECTS_TABLE, default "effects".
	Table string
	// Policy is how long final rows are kept; the zero Policy removes
	// nothing and [New] then returns no Remover.
	Policy Policy
	// Interval is EFFECTS_RETAIN_INTERVAL, default 1m: the time between the
	// start of one removal pass and the next. The first pass runs at start.
	Interval time.Duration
	// BatchSize is how many rows one DELETE removes, default 1000: each
	// batch is its own short transaction, so row locks are held for
	// milliseconds and no completion waits long behind a pass.
	BatchSize int
}

// Defaults.
const (
	DefaultInterval  = time.Minute
	DefaultBatchSize = 1000
	// MaxBatchSize bounds BatchSize: a larger DELETE holds its locks longer.
	MaxBatchSize = 100000
)

// ConfigFromEnv reads EFFECTS_RETAIN_SUCCEEDED, EFFECTS_RETAIN_FAILED,
// EFFECTS_RETAIN_CANCELLED and EFFECTS_RETAIN_INTERVAL for table. Empty or unset retention variables mean
// 0 (keep forever); an explicit 0 interval is refused, not defaulted.
func ConfigFromEnv(r *envconfig.Reader, table string) (Config, error) {
	c := Config{
		Table: table,
		Policy: Policy{
			Succeeded: r.Duration("EFFECTS_RETAIN_SUCCEEDED", 0),
			Failed:    r.Duration("EFFECTS_RETAIN_FAILED", 0),
			Cancelled: r.Duration("EFFECTS_RETAIN_CANCELLED", 0),
		},
		Interval:  r.Duration("EFFECTS_RETAIN_INTERVAL", DefaultInterval),
		BatchSize: DefaultBatchSize,
	}
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// WithDefaults returns a copy with zero fields (other than the policy) set
// to their defaults.
func (c Config) WithDefaults() Config {
	if c.Table == "" {
		c.Table = schema.DefaultTable
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	return c
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	if _, err := schema.ParseTable(c.Table); err != nil {
		return fmt.Errorf("EFFECTS_TABLE=%q: %w", c.Table, err)
	}
	if err := c.Policy.Validate(); err != nil {
		return err
	}
	switch {
	case c.Interval <= 0:
		return fmt.Errorf("EFFECTS_RETAIN_INTERVAL=%s: must be positive", c.Interval)
	case c.BatchSize < 1 || c.BatchSize > MaxBatchSize:
		return fmt.Errorf("retention batch size %d: want 1 to %d", c.BatchSize, MaxBatchSize)
	}
	return nil
}

// LogValue is the configuration as the completer logs it.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("table", c.Table),
		slog.Duration("retain_succeeded", c.Policy.Succeeded),
		slog.Duration("retain_failed", c.Policy.Failed),
		slog.Duration("retain_cancelled", c.Policy.Cancelled),
		slog.Duration("interval", c.Interval),
		slog.Int("batch_size", c.BatchSize),
	)
}
