package dispatcher

import (
	"errors"
	"fmt"
	"time"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// Config configures a [Dispatcher]. The zero value of a field means its
// default; [Config.WithDefaults] fills them in.
type Config struct {
	// Concurrency is how many effects of one kind run at once in this
	// process, and how many messages of that kind are pulled ahead.
	// EFFECTS_CONCURRENCY, default 100.
	Concurrency int
	// HandlerTimeout bounds one attempt; its context is cancelled then, and
	// an attempt still running is given up and retried.
	// EFFECTS_HANDLER_TIMEOUT, default 60s.
	HandlerTimeout time.Duration
	// MaxAttempts is how many attempts an effect gets before it fails.
	// EFFECTS_MAX_ATTEMPTS, default 10.
	MaxAttempts int
	// RetryBase is the delay after the first failed attempt; it doubles per
	// attempt, with jitter. EFFECTS_RETRY_BASE, default 1s.
	RetryBase time.Duration
	// RetryMax caps the backoff delay. EFFECTS_RETRY_MAX, default 5m.
	RetryMax time.Duration
	// AckWait is how long JetStream waits for an ack before redelivering to
	// another dispatcher: how long an effect whose dispatcher crashed waits.
	// It must exceed HandlerTimeout by at least AckWaitMargin: messages are
	// pulled ahead (up to Concurrency), and their ack timers run while they
	// wait for a worker, which can take one whole attempt. A running attempt
	// also renews it with InProgress every AckWait/3.
	// EFFECTS_ACK_WAIT, default HandlerTimeout + 30s (90s).
	AckWait time.Duration
	// MaxAckPending bounds the messages of one kind that are out at once
	// across all dispatcher processes, including those waiting out a retry
	// delay. EFFECTS_MAX_ACK_PENDING, default 10000.
	MaxAckPending int
	// ShutdownTimeout is how long running handlers may finish after
	// SIGTERM before they are interrupted and their effects go back to the
	// stream. EFFECTS_SHUTDOWN_TIMEOUT, default 30s.
	ShutdownTimeout time.Duration
	// Streams are the stream settings (EFFECTS_STREAM_MAX_AGE,
	// EFFECTS_DUPLICATE_WINDOW, EFFECTS_STREAM_REPLICAS).
	Streams effects.StreamOptions
}

// AckWaitMargin is how much longer than the handler timeout the ack wait must
// be: the most a worker is held after its handler's deadline (the grace for a
// handler to return, and the completion publish).
const AckWaitMargin = interruptGrace + publishTimeout + 4*time.Second

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 100
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 10
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 10000
	}
	def(&c.HandlerTimeout, 60*time.Second)
	def(&c.RetryBase, time.Second)
	def(&c.RetryMax, 5*time.Minute)
	def(&c.AckWait, c.HandlerTimeout+30*time.Second)
	def(&c.ShutdownTimeout, 30*time.Second)
	c.Streams = c.Streams.WithDefaults()
	return c
}

// Validate names the setting that is wrong.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("EFFECTS_CONCURRENCY=%d: want at least 1", c.Concurrency)
	case c.HandlerTimeout <= 0:
		return fmt.Errorf("EFFECTS_HANDLER_TIMEOUT=%s: want a positive duration", c.HandlerTimeout)
	case c.MaxAttempts < 1:
		return fmt.Errorf("EFFECTS_MAX_ATTEMPTS=%d: want at least 1", c.MaxAttempts)
	case c.RetryBase <= 0:
		return fmt.Errorf("EFFECTS_RETRY_BASE=%s: want a positive duration", c.RetryBase)
	case c.RetryMax < c.RetryBase:
		return fmt.Errorf("EFFECTS_RETRY_MAX=%s: want at least EFFECTS_RETRY_BASE (%s)", c.RetryMax, c.RetryBase)
	case c.AckWait < c.HandlerTimeout+AckWaitMargin:
		return fmt.Errorf("EFFECTS_ACK_WAIT=%s: want at least EFFECTS_HANDLER_TIMEOUT (%s) + %s: an effect pulled ahead may wait that long for a worker",
			c.AckWait, c.HandlerTimeout, AckWaitMargin)
	case c.MaxAckPending < c.Concurrency:
		return fmt.Errorf("EFFECTS_MAX_ACK_PENDING=%d: want at least EFFECTS_CONCURRENCY (%d)", c.MaxAckPending, c.Concurrency)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("EFFECTS_SHUTDOWN_TIMEOUT=%s: want a duration of zero or more", c.ShutdownTimeout)
	}
	if err := c.Streams.Validate(); err != nil {
		return errors.New("stream settings: " + err.Error())
	}
	return nil
}

// ConfigFromEnv reads the EFFECTS_* variables listed on [Config]'s fields.
func ConfigFromEnv(r *envconfig.Reader, streams effects.StreamOptions) (Config, error) {
	// An explicit 0 in the environment is checked like any other value,
	// not taken for "default" as a zero field of Config is.
	def := Config{}.WithDefaults()
	c := Config{
		Concurrency:     r.Int("EFFECTS_CONCURRENCY", def.Concurrency),
		HandlerTimeout:  r.Duration("EFFECTS_HANDLER_TIMEOUT", def.HandlerTimeout),
		MaxAttempts:     r.Int("EFFECTS_MAX_ATTEMPTS", def.MaxAttempts),
		RetryBase:       r.Duration("EFFECTS_RETRY_BASE", def.RetryBase),
		RetryMax:        r.Duration("EFFECTS_RETRY_MAX", def.RetryMax),
		AckWait:         r.Duration("EFFECTS_ACK_WAIT", 0),
		MaxAckPending:   r.Int("EFFECTS_MAX_ACK_PENDING", def.MaxAckPending),
		ShutdownTimeout: settings.ShutdownTimeout(r),
		Streams:         streams.WithDefaults(),
	}
	if err := r.Err(); err != nil {
		return Config{}, err
	}
	if r.String("EFFECTS_ACK_WAIT", "") == "" {
		c.AckWait = c.HandlerTimeout + 30*time.Second // follows the handler timeout
	}
	return c, c.Validate()
}
