package dispatcher

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	handled       *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	inFlight      *prometheus.GaugeVec
	publishErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_handled_total",
			Help: "Attempts by kind and outcome: succeeded, retried, failed, deferred (async handler started), interrupted (shutdown), malformed.",
		}, []string{"kind", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "effects_handler_duration_seconds",
			Help:    "Time a handler ran for one attempt.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"kind"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "effects_dispatcher_in_flight",
			Help: "Attempts running now.",
		}, []string{"kind"}),
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_completion_publish_errors_total",
			Help: "Completion publishes that JetStream did not acknowledge (the effect is redelivered).",
		}, []string{"kind"}),
	}
	for _, c := range []prometheus.Collector{m.handled, m.duration, m.inFlight, m.publishErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// kindMetrics are one kind's series, resolved once so the hot path does no
// label lookups.
type kindMetrics struct {
	handled       map[verdict]prometheus.Counter
	malformed     prometheus.Counter
	duration      prometheus.Observer
	inFlight      prometheus.Gauge
	publishErrors prometheus.Counter
}

func (m *metrics) forKind(kind string) *kindMetrics {
	km := &kindMetrics{
		handled:       map[verdict]prometheus.Counter{},
		malformed:     m.handled.WithLabelValues(kind, "malformed"),
		duration:      m.duration.WithLabelValues(kind),
		inFlight:      m.inFlight.WithLabelValues(kind),
		publishErrors: m.publishErrors.WithLabelValues(kind),
	}
	for _, v := range []verdict{succeeded, deferred, retried, failed, interrupted} {
		km.handled[v] = m.handled.WithLabelValues(kind, string(v))
	}
	return km
}
