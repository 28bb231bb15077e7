package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/redact"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// Remover runs retention passes on a schedule. Create it with [New] and run
// it with [Remover.Run] beside the completer.
type Remover struct {
	cfg     Config
	pool    *pgxpool.Pool
	logger  *slog.Logger
	m       *metrics
	table   schema.Table
	secrets []string
}

// New returns a Remover for cfg, removing through pool (one connection
// while a batch runs), with its metrics registered on reg. It does no I/O.
func New(cfg Config, pool *pgxpool.Pool, logger *slog.Logger, reg prometheus.Registerer) (*Remover, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || logger == nil || reg == nil {
		return nil, errors.New("retention: pool, logger and reg are required")
	}
	table, err := schema.ParseTable(cfg.Table)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("retention: register metrics: %w", err)
	}
	r := &Remover{cfg: cfg, pool: pool, logger: logger.With("component", "retention"), m: m, table: table}
	if pw := pool.Config().ConnConfig.Password; pw != "" {
		r.secrets = append(r.secrets, pw)
	}
	return r, nil
}

// Run runs a pass at once and then every Interval until ctx ends; it
// returns nil then. With a policy that keeps everything it logs so and
// returns at once. A pass that fails is logged and counted, and the next
// one runs at the next interval: a missed pass only keeps rows longer.
func (r *Remover) Run(ctx context.Context) error {
	if !r.cfg.Policy.Enabled() {
		r.logger.Info("retention: keeping every row", "policy", r.cfg.Policy.String())
		return nil
	}
	r.logger.Info("retention running", "config", r.cfg, "policy", r.cfg.Policy.String())
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		_, _ = r.RunPass(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunPass runs one pass now, with metrics and logs, and returns what it
// removed. ErrPassRunning (another replica was removing) is not an error
// of the pass: it returns nil then.
func (r *Remover) RunPass(ctx context.Context) (PassResult, error) {
	start := time.Now()
	res, err := Pass(ctx, r.pool, r.table, r.cfg.Policy, PassOptions{
		BatchSize: r.cfg.BatchSize,
		OnBatch:   func(s effects.Status, n int64) { r.m.removed[s].Add(float64(n)) },
	})
	switch {
	case errors.Is(err, ErrPassRunning):
		r.m.passes[ResultSkipped].Inc()
		r.logger.Debug("retention pass left to another replica", "removed_succeeded", res.Removed.Succeeded, "removed_failed", res.Removed.Failed, "removed_cancelled", res.Removed.Cancelled)
		err = nil
	case err != nil && ctx.Err() != nil:
		// Stopping: not a failure.
		return res, nil
	case err != nil:
		err = redact.Error(err, r.secrets...)
		r.m.passes[ResultError].Inc()
		r.m.passSeconds.Observe(time.Since(start).Seconds())
		r.logger.Warn("retention pass failed; retrying at the next interval", "error", err,
			"removed_succeeded", res.Removed.Succeeded, "removed_failed", res.Removed.Failed, "removed_cancelled", res.Removed.Cancelled, "next_in", r.cfg.Interval)
		return res, err
	default:
		r.m.passes[ResultDone].Inc()
		r.m.passSeconds.Observe(time.Since(start).Seconds())
		if n := res.Removed.Total(); n > 0 {
			r.logger.Info("retention pass removed rows", "removed_succeeded", res.Removed.Succeeded,
				"removed_failed", res.Removed.Failed, "removed_cancelled", res.Removed.Cancelled, "seconds", time.Since(start).Seconds())
		}
	}
	ages, aerr := OldestAge(ctx, r.pool, r.table)
	if aerr != nil {
		if ctx.Err() == nil {
			r.logger.Warn("retention: reading the oldest rows failed", "error", redact.Error(aerr, r.secrets...))
		}
		return res, err
	}
	for _, s := range Statuses {
		r.m.oldest[s].Set(ages[s].Seconds())
	}
	return res, err
}
