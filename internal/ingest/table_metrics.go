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
	owner      prometheus.Gauge
}

func newTableMetrics(reg prometheus.Registerer) (*tableMetrics, error) {
	m := &tableMetrics{
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "effects_table_backlog",
			Help: "Pending rows of the effects table not yet published by the table source: committed rows its cursor has not passed (refreshed every 5s). Growing means the source is down or cannot keep up.",
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
			Help: "Table source failures (PostgreSQL or NATS unavailable, a publish not acked): the cursor stays at the last batch acked and the rows after it are tried again.",
		}),
		fastRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_table_fast_batch_rows_total",
			Help: "Effects the table source sent in JetStream fast batches, by result: stored (the batch's acks confirmed it), fallback (not confirmed: the batch ended short, was refused or timed out; published again message by message, stored once by its message id).",
		}, []string{"result"}),
		owner: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "effects_table_cursor_owner",
			Help: "1 while this ingest holds the table source's lock and publishes the table, 0 while it waits to take over (one ingest of a deployment has 1).",
		}),
	}
	for _, r := range []string{"stored", "fallback"} {
		m.fastRows.WithLabelValues(r) // exported at 0 from the start
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.backlog, m.backlogAge, m.batchSize, m.errors, m.fastRows, m.owner} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("ingest: register table source metrics: %w", err)
			}
		}
	}
	return m, nil
}

// watchBacklog refreshes the backlog gauges until ctx ends, in every replica
// (the owner's and the waiting ones' agree: they read the cursor as last
// written). The count walks the partial (txid, id) index from the cursor
// on, so its cost is the backlog's size.
func (s *TableSource) watchBacklog(ctx context.Context) {
	t := time.NewTicker(s.cfg.BacklogInterval)
	defer t.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, s.cfg.BacklogInterval)
		n, age, err := s.backlog(qctx)
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
