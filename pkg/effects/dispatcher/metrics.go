package dispatcher

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/consume"
)

type metrics struct {
	handled       *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	inFlight      *prometheus.GaugeVec
	publishErrors *prometheus.CounterVec
	overruns      *prometheus.CounterVec
	overrunning   *prometheus.GaugeVec
	held          *prometheus.GaugeVec
	rateUp        *prometheus.GaugeVec
	rateCreated   prometheus.Counter
	// consumers are the kinds' consumers' (internal/consume).
	consumers *consume.Metrics
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_handled_total",
			Help: "Deliveries by kind and outcome: succeeded, retried, failed, deferred (async handler started), interrupted (shutdown), malformed, cancelled (by an operator).",
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
		overruns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_handler_overruns_total",
			Help: "Attempts given up because their handler kept running past its timeout and grace (it ignored its context).",
		}, []string{"kind"}),
		overrunning: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "effects_handlers_overrunning",
			Help: "Handlers still running after their attempt was given up.",
		}, []string{"kind"}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "effects_async_held",
			Help: "Async effects whose work started and whose completion has not arrived yet (messages held by this process).",
		}, []string{"kind"}),
		rateUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "effects_dispatcher_rate_limit_up",
			Help: "Rate-limited kinds: 1 while the kind's rate-limit state (bucket " + RateBucket + ") can be read and written, 0 while it cannot and the kind's effects wait.",
		}, []string{"kind"}),
		rateCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "effects_dispatcher_rate_bucket_created_total",
			Help: "Times the rate-limit bucket " + RateBucket + " was found gone (a nats-server restart empties it, or it was deleted) and created again.",
		}),
	}
	for _, c := range []prometheus.Collector{m.handled, m.duration, m.inFlight, m.publishErrors, m.overruns, m.overrunning, m.held, m.rateUp, m.rateCreated} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	var err error
	if m.consumers, err = consume.NewMetrics(reg); err != nil {
		return nil, err
	}
	return m, nil
}

// kindMetrics are one kind's series, resolved once so the hot path does no
// label lookups.
type kindMetrics struct {
	handled       map[verdict]prometheus.Counter
	duration      prometheus.Observer
	inFlight      prometheus.Gauge
	publishErrors prometheus.Counter
	overruns      prometheus.Counter
	overrunning   prometheus.Gauge
	held          prometheus.Gauge
}

func (m *metrics) forKind(kind string) *kindMetrics {
	km := &kindMetrics{
		handled:       map[verdict]prometheus.Counter{},
		duration:      m.duration.WithLabelValues(kind),
		inFlight:      m.inFlight.WithLabelValues(kind),
		publishErrors: m.publishErrors.WithLabelValues(kind),
		overruns:      m.overruns.WithLabelValues(kind),
		overrunning:   m.overrunning.WithLabelValues(kind),
		held:          m.held.WithLabelValues(kind),
	}
	for _, v := range []verdict{succeeded, deferred, retried, failed, interrupted, malformed, cancelled} {
		km.handled[v] = m.handled.WithLabelValues(kind, string(v))
	}
	return km
}
