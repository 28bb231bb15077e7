package reconcile

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/kindlabel"
)

// Reasons a pending row old enough was left alone
// (effects_reconciler_skipped_total).
const (
	// SkipBacklog: the kind's dispatcher consumer has messages not yet
	// delivered or not yet acknowledged, so the row's effect may be among
	// them.
	SkipBacklog = "backlog"
	// SkipNoConsumer: no dispatcher consumer exists for the kind; a
	// dispatcher starting later reads the stream from its start, and the
	// row's effect may be there.
	SkipNoConsumer = "no_consumer"
	// SkipCompletions: the completer's consumer has completions waiting;
	// the row's may be one of them.
	SkipCompletions = "completions_backlog"
)

// Results of a pass (effects_reconciler_passes_total).
const (
	ResultDone    = "done"
	ResultSkipped = "skipped" // another replica was reconciling
	ResultError   = "error"
)

type metrics struct {
	kinds       *kindlabel.Set
	republished *prometheus.CounterVec
	rejected    *prometheus.CounterVec
	skipped     *prometheus.CounterVec
	passes      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		kinds: kindlabel.New(kindlabel.DefaultMax),
		republished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_reconciler_republished_total",
			Help: "Pending rows the reconciler published again to JetStream, by kind.",
		}, []string{"kind"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_reconciler_rejected_total",
			Help: "Pending rows the reconciler failed because they can never be handled (invalid kind, message over the NATS max_payload), by kind.",
		}, []string{"kind"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_reconciler_skipped_total",
			Help: "Pending rows old enough that a pass left alone, by kind and reason: backlog (the kind's consumer has messages pending), no_consumer (no dispatcher consumer for the kind), completions_backlog (the completer has completions waiting).",
		}, []string{"kind", "reason"}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_reconciler_passes_total",
			Help: "Reconciler passes by result: done, skipped (another replica was reconciling), error (retried at the next interval).",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.republished, m.rejected, m.skipped, m.passes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{ResultDone, ResultSkipped, ResultError} {
		m.passes.WithLabelValues(r)
	}
	return m, nil
}
