package completer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/pkg/effects"
)

// Reasons a completion changed nothing (effects_completions_skipped_total).
const (
	// ReasonUnchanged: the row exists and the rules kept it as it was (it
	// already succeeded, the completion is a duplicate or older than the
	// row's failure, or another completion of the same batch won).
	ReasonUnchanged = "unchanged"
	// ReasonUnknownEffect: no row has the completion's effect_id.
	ReasonUnknownEffect = "unknown_effect"
	// ReasonCancelled: the row is cancelled (by an operator); the
	// completion of an attempt that ran anyway is not recorded.
	ReasonCancelled = "cancelled"
	// ReasonMalformed: the message is not a valid completion, or PostgreSQL
	// refused its values; it was terminated.
	ReasonMalformed = "malformed"
)

type metrics struct {
	written      map[effects.Status]prometheus.Counter
	skipped      map[string]prometheus.Counter
	endToEnd     *prometheus.HistogramVec
	batchSize    prometheus.Histogram
	writeSeconds prometheus.Histogram
	writeErrors  prometheus.Counter
	ackErrors    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	written := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "effects_completions_written_total",
		Help: "Completions written into their row, by the status written.",
	}, []string{"status"})
	skipped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "effects_completions_skipped_total",
		Help: "Completions that changed no row, by reason: unchanged (the rules kept the row), cancelled (the row was cancelled by an operator), unknown_effect (no such row), malformed (terminated).",
	}, []string{"reason"})
	m := &metrics{
		written: map[effects.Status]prometheus.Counter{
			effects.StatusSucceeded: written.WithLabelValues(string(effects.StatusSucceeded)),
			effects.StatusFailed:    written.WithLabelValues(string(effects.StatusFailed)),
		},
		skipped: map[string]prometheus.Counter{
			ReasonUnchanged:     skipped.WithLabelValues(ReasonUnchanged),
			ReasonUnknownEffect: skipped.WithLabelValues(ReasonUnknownEffect),
			ReasonCancelled:     skipped.WithLabelValues(ReasonCancelled),
			ReasonMalformed:     skipped.WithLabelValues(ReasonMalformed),
		},
		endToEnd: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "effects_end_to_end_seconds",
			Help: "From the row's created_at to its completion being written, by the row's kind (~other for kinds beyond the first 100).",
			// 1ms to 10 minutes: a healthy pipeline answers in milliseconds,
			// retries with backoff take minutes.
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"kind"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "effects_completer_batch_size",
			Help:    "Completion messages taken per batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 to 8192
		}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "effects_completer_write_seconds",
			Help:    "Duration of one batch statement, failed ones included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "effects_completer_write_errors_total",
			Help: "Batch statements that failed (each try counts); the batch is retried.",
		}),
		ackErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "effects_completer_ack_errors_total",
			Help: "Acks, naks and terms the NATS client refused; JetStream redelivers those messages.",
		}),
	}
	for _, c := range []prometheus.Collector{written, skipped, m.endToEnd, m.batchSize, m.writeSeconds, m.writeErrors, m.ackErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
