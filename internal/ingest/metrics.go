package ingest

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/pkg/effects"
)

// Outcomes of an event, the outcome label of effects_ingested_total.
const (
	outcomePublished = "published"
	outcomeDuplicate = "duplicate"
	outcomeIgnored   = "ignored"
	outcomeRejected  = "rejected"
)

// invalidKindLabel stands for every kind that is not valid, so that whoever
// can insert rows cannot create a label value per garbage kind.
const invalidKindLabel = "~invalid"

func kindLabel(kind string) string {
	if effects.ValidateKind(kind) != nil {
		return invalidKindLabel
	}
	return kind
}

type metrics struct {
	// kinds bounds the kind label: the allow-list's kinds and the first
	// kindlabel.DefaultMax others get their own, the rest count as ~other.
	kinds    *kindlabel.Set
	ingested *prometheus.CounterVec
	requests *prometheus.CounterVec
	// byCode holds the request counters of the codes the ingest answers
	// with, so that counting a reply does not format a label.
	byCode         map[int]prometheus.Counter
	publishSeconds prometheus.Histogram
	// Kinds with effects in the stream that no consumer takes.
	kindsWithoutConsumer prometheus.Gauge
	unconsumed           *prometheus.GaugeVec
}

// newMetrics makes the ingest's metrics. effects_ingested_total and
// effects_ingest_publish_seconds are shared by a webhook and a table source
// on one registry; the webhook's own (requests, kinds without consumer) are
// registered only for the webhook, and twice is refused.
func newMetrics(reg prometheus.Registerer, kinds *kindlabel.Set, webhook bool) (*metrics, error) {
	m := &metrics{
		kinds: kinds,
		ingested: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_ingested_total",
			Help: "Hasura events handled by the ingest, by effect kind (~invalid for a kind that is not valid, ~other for kinds beyond the first 100) and outcome: published, duplicate (JetStream already had the event), ignored (UPDATE or DELETE), rejected (a row that can never succeed, failed at once).",
		}, []string{"kind", "outcome"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_ingest_requests_total",
			Help: "Webhook requests answered, by HTTP status code.",
		}, []string{"code"}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "effects_ingest_publish_seconds",
			Help:    "Time from publishing a message (an effect, or the failed completion of a rejected row) to JetStream's ack, for acked publishes.",
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 15), // 250µs to 4s
		}),
		kindsWithoutConsumer: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "effects_kinds_without_consumer",
			Help: "Kinds whose effects are in the EFFECTS stream while no consumer's filter takes them (checked every EFFECTS_CONSUMER_CHECK_INTERVAL): nobody handles them, and they expire unhandled.",
		}),
		unconsumed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "effects_unconsumed_kind_messages",
			Help: "Messages in the EFFECTS stream of each kind no consumer takes (~other for kinds beyond the first 100).",
		}, []string{"kind"}),
		byCode: make(map[int]prometheus.Counter),
	}
	for _, code := range []int{
		http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound,
		http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable,
	} {
		m.byCode[code] = m.requests.WithLabelValues(strconv.Itoa(code))
	}
	if reg != nil {
		// A webhook and a table source on one registry share these: the
		// second takes the collectors the first registered.
		var err error
		if m.ingested, err = register(reg, m.ingested); err != nil {
			return nil, err
		}
		if m.publishSeconds, err = register(reg, m.publishSeconds); err != nil {
			return nil, err
		}
		// Only the webhook answers requests and checks consumers; two
		// webhooks on one registry are a mistake and refused.
		if webhook {
			for _, c := range []prometheus.Collector{m.requests, m.kindsWithoutConsumer, m.unconsumed} {
				if err := reg.Register(c); err != nil {
					return nil, fmt.Errorf("ingest: register metrics: %w", err)
				}
			}
		}
	}
	return m, nil
}

// ingest counts an event of kind with its outcome, under a bounded label.
func (m *metrics) ingest(kind, outcome string) {
	m.ingested.WithLabelValues(m.kinds.Label(kind), outcome).Inc()
}

func (m *metrics) request(code int) {
	if c, ok := m.byCode[code]; ok {
		c.Inc()
		return
	}
	m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
}

// register registers c on reg, or returns the collector of the same
// description already registered there.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	if err != nil {
		return c, fmt.Errorf("ingest: register metrics: %w", err)
	}
	return c, nil
}
