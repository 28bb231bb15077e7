package retention

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/pkg/effects"
)

// Results of a pass (effects_retention_passes_total).
const (
	ResultDone    = "done"
	ResultSkipped = "skipped" // another replica was removing rows
	ResultError   = "error"
)

type metrics struct {
	removed     map[effects.Status]prometheus.Counter
	oldest      map[effects.Status]prometheus.Gauge
	passes      map[string]prometheus.Counter
	passSeconds prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	removed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "effects_retention_removed_total",
		Help: "Rows removed by retention, by status.",
	}, []string{"status"})
	oldest := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "effects_retention_oldest_kept_seconds",
		Help: "Age (by created_at) of the oldest row of each final status still in the table after the last pass; 0 when there is none. With retention R it stays near R when removal keeps up.",
	}, []string{"status"})
	passes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "effects_retention_passes_total",
		Help: "Retention passes by result: done, skipped (another replica was removing rows), error (retried at the next interval).",
	}, []string{"result"})
	m := &metrics{
		removed: map[effects.Status]prometheus.Counter{},
		oldest:  map[effects.Status]prometheus.Gauge{},
		passes:  map[string]prometheus.Counter{},
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "effects_retention_pass_seconds",
			Help:    "Duration of retention passes that ran (done or error).",
			Buckets: []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900},
		}),
	}
	for _, s := range Statuses {
		m.removed[s] = removed.WithLabelValues(string(s))
		m.oldest[s] = oldest.WithLabelValues(string(s))
	}
	for _, r := range []string{ResultDone, ResultSkipped, ResultError} {
		m.passes[r] = passes.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{removed, oldest, passes, m.passSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
