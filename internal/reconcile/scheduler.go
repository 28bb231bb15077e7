package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/internal/schema"
)

// ScheduleMsgIDPrefix starts the Nats-Msg-Id of every effect the scheduler
// publishes: "schedule:<row id>:<run_at in Unix microseconds>" (see
// [ScheduleMsgID]).
const ScheduleMsgIDPrefix = "schedule:"

// ScheduleMsgID is the Nats-Msg-Id the scheduler publishes a row due at
// runAt with. A batch published again after a crash before its commit
// repeats it, so JetStream's duplicate window stores it once; a row made to
// wait again for another time (moved, or retried before its time) is a
// publish of its own, even within the window.
func ScheduleMsgID(id string, runAt time.Time) string {
	return ScheduleMsgIDPrefix + id + ":" + strconv.FormatInt(runAt.UnixMicro(), 10)
}

// ScheduleConfig configures a [Scheduler].
type ScheduleConfig struct {
	// Table is EFFECTS_TABLE, default "effects".
	Table string
	// Interval is EFFECTS_SCHEDULE_INTERVAL, default 1s: how often the
	// scheduler looks for rows that became due. A scheduled effect is
	// published at most about this long after its run_at.
	Interval time.Duration
	// BatchSize is the most rows one transaction claims, default 500.
	BatchSize int
	// PublishTimeout bounds the wait for JetStream's acks of one batch,
	// default 10s.
	PublishTimeout time.Duration
	// CountInterval is how often the rows still waiting are counted for
	// effects_scheduled_waiting, default 1m: a count reads the whole
	// waiting index (a million waiting rows: a third of a second).
	CountInterval time.Duration
}

// Schedule defaults.
const (
	DefaultScheduleInterval  = time.Second
	DefaultScheduleBatchSize = 500
	DefaultCountInterval     = time.Minute
)

// ScheduleConfigFromEnv reads EFFECTS_SCHEDULE_INTERVAL for table.
func ScheduleConfigFromEnv(r *envconfig.Reader, table string) (ScheduleConfig, error) {
	c := ScheduleConfig{Table: table, Interval: r.PositiveDuration("EFFECTS_SCHEDULE_INTERVAL", DefaultScheduleInterval)}
	if err := r.Err(); err != nil {
		return ScheduleConfig{}, err
	}
	if err := c.WithDefaults().Validate(); err != nil {
		return ScheduleConfig{}, err
	}
	return c, nil
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c ScheduleConfig) WithDefaults() ScheduleConfig {
	if c.Table == "" {
		c.Table = schema.DefaultTable
	}
	if c.Interval == 0 {
		c.Interval = DefaultScheduleInterval
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultScheduleBatchSize
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.CountInterval == 0 {
		c.CountInterval = DefaultCountInterval
	}
	return c
}

// Validate names the setting that is wrong.
func (c ScheduleConfig) Validate() error {
	if _, err := schema.ParseTable(c.Table); err != nil {
		return fmt.Errorf("EFFECTS_TABLE=%q: %w", c.Table, err)
	}
	switch {
	case c.Interval < 10*time.Millisecond || c.Interval > time.Minute:
		return fmt.Errorf("EFFECTS_SCHEDULE_INTERVAL=%s: want 10ms to 1m (how late a scheduled effect may start)", c.Interval)
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return fmt.Errorf("schedule batch size %d: want 1 to 10000", c.BatchSize)
	case c.PublishTimeout < 0:
		return fmt.Errorf("schedule publish timeout %s: must be positive", c.PublishTimeout)
	case c.CountInterval < 0:
		return fmt.Errorf("schedule count interval %s: must be positive", c.CountInterval)
	}
	return nil
}

// LogValue is the configuration as the completer logs it.
func (c ScheduleConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("table", c.Table),
		slog.Duration("interval", c.Interval),
		slog.Int("batch_size", c.BatchSize),
	)
}

// Scheduler publishes scheduled effects once they are due. A row is
// scheduled when its run_at is after its created_at ([ingest.Scheduled]);
// no source publishes such a row, it waits in the table (docs/architecture.md,
// "Scheduled effects", says why there and not in NATS). Every Interval the
// scheduler claims the due ones (run_at <= now(), pending, published_at
// NULL) FOR UPDATE SKIP LOCKED, due first, publishes each with the ingest's
// message builder and Nats-Msg-Id "schedule:<row id>:<run_at>", sets published_at
// after JetStream's ack and commits. A crash between the ack and the commit
// publishes the batch again with the same ids, which JetStream's duplicate
// window stores once. Replicas split the due rows (SKIP LOCKED); the table
// source and the reconciler, which claim the same way, never publish a row
// the scheduler holds.
//
// The effect enters the stream only when due, so the dispatcher's first
// delivery is its first attempt, waiting holds no consumer slot and no
// worker, and other teams' consumers never see it early.
type Scheduler struct {
	cfg    ScheduleConfig
	pool   *pgxpool.Pool
	js     jetstream.JetStream
	logger *slog.Logger
	m      *scheduleMetrics
	pub    rowPublisher

	claimSQL, markSQL, countSQL string
}

// NewScheduler returns a Scheduler for cfg reading the table through pool
// and publishing through js, with its metrics registered on reg. It does no
// I/O.
func NewScheduler(cfg ScheduleConfig, pool *pgxpool.Pool, js jetstream.JetStream, logger *slog.Logger, reg prometheus.Registerer) (*Scheduler, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pool == nil || js == nil || logger == nil || reg == nil {
		return nil, errors.New("schedule: pool, js, logger and reg are required")
	}
	table, err := schema.ParseTable(cfg.Table)
	if err != nil {
		return nil, err
	}
	q := table.Quoted()
	// waiting is the waiting index's predicate word for word (migration
	// 005), so that every statement here reads that index.
	const waiting = `status = 'pending' AND published_at IS NULL AND run_at > created_at`
	// The due rows, oldest first, at most dueCountCap of them: one probe
	// when the scheduler keeps up, a bounded read when it does not.
	m, err := newScheduleMetrics(reg, pool, `SELECT coalesce(extract(epoch FROM clock_timestamp() - min(run_at)), 0)::float8, count(*) FROM (
		SELECT run_at FROM `+q+` WHERE `+waiting+` AND run_at <= now() ORDER BY run_at LIMIT `+strconv.Itoa(dueCountCap)+`) due`)
	if err != nil {
		return nil, fmt.Errorf("schedule: register metrics: %w", err)
	}
	logger = logger.With("component", "scheduler")
	return &Scheduler{
		cfg: cfg, pool: pool, js: js, logger: logger, m: m,
		pub: rowPublisher{js: js, kinds: m.kinds, logger: logger, who: "scheduler"},
		claimSQL: `SELECT id::text, kind, payload::text, created_at, published_at, run_at FROM ` + q + `
			 WHERE ` + waiting + ` AND run_at <= now()
			 ORDER BY run_at
			 LIMIT $1
			 FOR UPDATE SKIP LOCKED`,
		markSQL:  `UPDATE ` + q + ` SET published_at = now() WHERE id = ANY($1::uuid[])`,
		countSQL: `SELECT count(*) FROM ` + q + ` WHERE ` + waiting + ` AND run_at > now()`,
	}, nil
}

// Run publishes due rows every Interval until ctx ends; it returns nil
// then. A failed pass is logged and tried again at the next interval.
func (s *Scheduler) Run(ctx context.Context) error {
	s.logger.Info("scheduler running", "config", s.cfg)
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	var counted time.Time
	var lastErr time.Time
	for {
		if time.Since(counted) >= s.cfg.CountInterval {
			if err := s.count(ctx); err == nil {
				counted = time.Now()
			}
		}
		if _, _, err := s.RunPass(ctx); err != nil && ctx.Err() == nil && time.Since(lastErr) >= 10*time.Second {
			lastErr = time.Now()
			s.logger.Warn("scheduler pass failed; retrying (logged at most every 10s)", "error", err, "every", s.cfg.Interval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunPass publishes every row due now, a batch at a time, and returns how
// many it published and how many it failed as unusable.
func (s *Scheduler) RunPass(ctx context.Context) (published, rejected int, err error) {
	for ctx.Err() == nil {
		n, p, r, err := s.batch(ctx)
		published += p
		rejected += r
		if err != nil {
			s.m.passes.WithLabelValues(ResultError).Inc()
			return published, rejected, err
		}
		if n < s.cfg.BatchSize {
			break
		}
	}
	s.m.passes.WithLabelValues(ResultDone).Inc()
	return published, rejected, nil
}

// batch claims up to BatchSize due rows, publishes them, marks the acked
// ones and commits. It returns how many rows it claimed.
func (s *Scheduler) batch(ctx context.Context) (claimedN, published, rejected int, err error) {
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*s.cfg.PublishTimeout)
	defer cancel()
	tx, err := s.pool.Begin(bctx)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("PostgreSQL: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(bctx)) }()
	rows, err := tx.Query(bctx, s.claimSQL, s.cfg.BatchSize)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("PostgreSQL: claim: %w", err)
	}
	var claimed []row
	for rows.Next() {
		var x row
		if err := rows.Scan(&x.id, &x.kind, &x.payload, &x.createdAt, &x.publishedAt, &x.runAt); err != nil {
			rows.Close()
			return 0, 0, 0, fmt.Errorf("PostgreSQL: claim: %w", err)
		}
		claimed = append(claimed, x)
	}
	if err := rows.Err(); err != nil {
		return 0, 0, 0, fmt.Errorf("PostgreSQL: claim: %w", err)
	}
	if len(claimed) == 0 {
		return 0, 0, 0, nil
	}
	flights := make([]inFlight, 0, len(claimed))
	for _, x := range claimed {
		var f inFlight
		var err error
		msgID := ScheduleMsgID(x.id, x.runAt.Time)
		if reason := x.unusable(); reason != "" {
			f, err = s.pub.reject(x, reason, msgID)
		} else {
			f, err = s.pub.publish(x, msgID)
		}
		if err != nil {
			return 0, 0, 0, err
		}
		flights = append(flights, f)
	}
	done, acked, publishErr := awaitAcks(flights, s.cfg.PublishTimeout)
	if len(acked) > 0 {
		if _, err := tx.Exec(bctx, s.markSQL, acked); err != nil {
			return 0, 0, 0, fmt.Errorf("PostgreSQL: mark published: %w", err)
		}
	}
	if err := tx.Commit(bctx); err != nil {
		return 0, 0, 0, fmt.Errorf("PostgreSQL: commit: %w", err)
	}
	now := time.Now()
	for _, f := range done {
		if f.rejected {
			rejected++
			s.m.rejected.WithLabelValues(f.label).Inc()
			continue
		}
		published++
		s.m.published.WithLabelValues(f.label).Inc()
		if f.row.runAt.Valid {
			s.m.lateness.Observe(max(now.Sub(f.row.runAt.Time), 0).Seconds())
		}
	}
	return len(claimed), published, rejected, publishErr
}

// count sets effects_scheduled_waiting.
func (s *Scheduler) count(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var n int64
	if err := s.pool.QueryRow(cctx, s.countSQL).Scan(&n); err != nil {
		return err
	}
	s.m.waiting.Set(float64(n))
	return nil
}

type scheduleMetrics struct {
	kinds     *kindlabel.Set
	published *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	passes    *prometheus.CounterVec
	lateness  prometheus.Histogram
	waiting   prometheus.Gauge
}

func newScheduleMetrics(reg prometheus.Registerer, pool *pgxpool.Pool, overdueSQL string) (*scheduleMetrics, error) {
	m := &scheduleMetrics{
		kinds: kindlabel.New(kindlabel.DefaultMax),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_scheduler_published_total",
			Help: "Scheduled effects the scheduler published to JetStream once due, by kind.",
		}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_scheduler_rejected_total",
			Help: "Scheduled rows the scheduler failed when due because they can never be handled (invalid kind, message over the NATS max_payload), by kind.",
		}, []string{"kind"}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_scheduler_passes_total",
			Help: "Scheduler passes by result: done, error (retried at the next interval).",
		}, []string{"result"}),
		lateness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "effects_scheduler_lateness_seconds",
			Help:    "From a scheduled effect's run_at to JetStream's ack of its message (this host's clock against run_at).",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300},
		}),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "effects_scheduled_waiting",
			Help: "Scheduled effects waiting for their run_at (pending, not yet due), counted every minute.",
		}),
	}
	overdue := &overdueCollector{pool: pool, sql: overdueSQL,
		age: prometheus.NewDesc("effects_scheduled_overdue_seconds",
			"Age of the oldest scheduled effect that is due but not yet published (now - its run_at), 0 when none; read at scrape time. Above a few seconds the scheduler is not keeping up or not running.", nil, nil),
		due: prometheus.NewDesc("effects_scheduled_due",
			"Scheduled effects that are due and not yet published, counted up to 100000 at scrape time; near 0 while the scheduler keeps up.", nil, nil),
		up: prometheus.NewDesc("effects_scheduled_overdue_up", "1 when effects_scheduled_overdue_seconds and effects_scheduled_due could be read at this scrape, 0 when PostgreSQL did not answer.", nil, nil),
	}
	for _, c := range []prometheus.Collector{m.published, m.rejected, m.passes, m.lateness, m.waiting, overdue} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{ResultDone, ResultError} {
		m.passes.WithLabelValues(r)
	}
	return m, nil
}

// dueCountCap bounds effects_scheduled_due: past it the scheduler is
// plainly not keeping up, and a scrape need not read further.
const dueCountCap = 100000

// overdueCollector reads effects_scheduled_overdue_seconds and
// effects_scheduled_due when scraped:
// one probe of the waiting index, so it is as fresh as the scrape and shows
// a scheduler that stopped (a gauge it set itself would stop with it).
type overdueCollector struct {
	pool         *pgxpool.Pool
	sql          string
	age, due, up *prometheus.Desc
}

func (c *overdueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.age; ch <- c.due; ch <- c.up }

func (c *overdueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var age float64
	var due int64
	if err := c.pool.QueryRow(ctx, c.sql).Scan(&age, &due); err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, max(age, 0))
	ch <- prometheus.MustNewConstMetric(c.due, prometheus.GaugeValue, float64(due))
}
