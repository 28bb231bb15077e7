package completer

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/schema"
)

// oldestPendingTimeout bounds the query of one scrape, well under
// Prometheus's default scrape timeout of 10s.
const oldestPendingTimeout = 2 * time.Second

var (
	oldestPendingDesc = prometheus.NewDesc("effects_oldest_pending_seconds",
		"Age of the oldest pending row of the effects table, counted from when it was due (its run_at for a scheduled effect, else its created_at; 0 when none is pending or due), read at scrape time. Growing without bound means effects are not completing: a kind without a dispatcher, a stalled completer, a lost message.",
		nil, nil)
	oldestPendingUpDesc = prometheus.NewDesc("effects_oldest_pending_up",
		"1 if this scrape could read effects_oldest_pending_seconds from PostgreSQL, 0 if not (PostgreSQL down or no answer within 2s).",
		nil, nil)
)

// oldestPendingCollector asks PostgreSQL for the oldest pending row at each
// scrape: the earliest time a pending row was due, GREATEST(created_at,
// run_at), over the due partial index (migration 008), one index probe, so
// it costs the same however many rows are pending. A row is old from when it
// was due: a scheduled effect waiting for next week is not late, and one due
// a minute ago that has not run is a minute old whenever it was inserted.
// Rows due at
// 'infinity' or '-infinity' have no age and are left out: subtracting one
// fails the query ("cannot subtract infinite timestamps"), so a single such
// row turned every scrape into effects_oldest_pending_up 0.
type oldestPendingCollector struct {
	pool *pgxpool.Pool
	sql  string
}

func newOldestPendingCollector(pool *pgxpool.Pool, table schema.Table) *oldestPendingCollector {
	return &oldestPendingCollector{pool: pool, sql: fmt.Sprintf(
		`SELECT coalesce(extract(epoch FROM clock_timestamp() - min(GREATEST(created_at, run_at))), 0)::float8 FROM %s WHERE status = 'pending' AND isfinite(GREATEST(created_at, run_at))`,
		table.Quoted())}
}

func (c *oldestPendingCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- oldestPendingDesc
	ch <- oldestPendingUpDesc
}

func (c *oldestPendingCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), oldestPendingTimeout)
	defer cancel()
	var age float64
	if err := c.pool.QueryRow(ctx, c.sql).Scan(&age); err != nil {
		ch <- prometheus.MustNewConstMetric(oldestPendingUpDesc, prometheus.GaugeValue, 0)
		return
	}
	// A due time in the future (every pending row is waiting for its
	// run_at, or a client's clock) is not an age.
	ch <- prometheus.MustNewConstMetric(oldestPendingDesc, prometheus.GaugeValue, max(age, 0))
	ch <- prometheus.MustNewConstMetric(oldestPendingUpDesc, prometheus.GaugeValue, 1)
}
