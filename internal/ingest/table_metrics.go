package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// tableMetrics are the table source's own metrics; effects_ingested_total
// and effects_ingest_publish_seconds are shared with the webhook.
type tableMetrics struct {
	backlog    prometheus.Gauge
	backlogAge prometheus.Gauge
	batchSize  prometheus.Histogram
	errors     prometheus.Counter
	fastRows   *prometheus.CounterVec
}

func newTableMetrics(reg prometheus.Registerer) (*tableMetrics, error) {
	m := &tableMetrics{
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "effects_table_backlog",
			Help: "Pending rows of the effects table not yet published by the table source (refreshed every 5s). Growing means the source is down or cannot keep up.",
		}),
		backlogAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "effects_table_backlog_age_seconds",
			Help: "Age of the oldest pending row not yet published by the table source; 0 when there is none (refreshed every 5s).",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "effects_table_batch_size",
			Help:    "Rows claimed per batch by the table source (empty polls not counted).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 to 8192
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "effects_table_batch_errors_total",
			Help: "Table source batches that failed (PostgreSQL or NATS unavailable); their rows stay unpublished and are tried again.",
		}),
		fastRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_table_fast_batch_rows_total",
			Help: "Effects the table source sent in JetStream fast batches, by result: stored (the batch's acks confirmed it), fallback (not confirmed: the batch ended short, was refused or timed out; published again message by message, stored once by its message id).",
		}, []string{"result"}),
	}
	for _, r := range []string{"stored", "fallback"} {
		m.fastRows.WithLabelValues(r) // exported at 0 from the start
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.backlog, m.backlogAge, m.batchSize, m.errors, m.fastRows} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("ingest: register table source metrics: %w", err)
			}
		}
	}
	return m, nil
}

// watchBacklog refreshes the backlog gauges until ctx ends. The count reads
// the partial index of unpublished rows, so its cost is the backlog's size.
func (s *TableSource) watchBacklog(ctx context.Context) {
	t := time.NewTicker(s.cfg.BacklogInterval)
	defer t.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, s.cfg.BacklogInterval)
		var n int64
		var age float64
		err := s.pool.QueryRow(qctx, s.backlogSQL).Scan(&n, &age)
		cancel()
		if err == nil {
			s.tm.backlog.Set(float64(n))
			s.tm.backlogAge.Set(max(age, 0))
		} else if ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
			s.logger.Debug("table source: reading the backlog failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
