package ingest

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

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
	// outcomeScheduled is a row whose run_at is after its created_at: the
	// completer's scheduler publishes it when due.
	outcomeScheduled = "scheduled"
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
	// byKind holds effects_ingested_total's counters of each kind whose
	// label is the kind itself (so at most the kind label's bound), by
	// outcome: counting an event is one lock-free map lookup instead of a
	// label check and a hash of both labels. Copied on write.
	byKind   atomic.Pointer[map[string]*kindCounters]
	requests *prometheus.CounterVec
	// byCode holds the request counters of the codes the ingest answers
	// with, so that counting a reply does not format a label.
	byCode         map[int]prometheus.Counter
	publishSeconds prometheus.Histogram
	// publishErrors counts publishes JetStream did not ack, by reason.
	publishErrors *prometheus.CounterVec
	// duration and durationByCode time webhook requests, by status code.
	duration       *prometheus.HistogramVec
	durationByCode map[int]prometheus.Observer
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
			Help: "Hasura events handled by the ingest, by effect kind (~invalid for a kind that is not valid, ~other for kinds beyond the first 100) and outcome: published, duplicate (JetStream already had the event), ignored (UPDATE or DELETE), rejected (a row that can never succeed, failed at once), scheduled (a row with a run_at after its created_at, left for the completer's scheduler to publish when due).",
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
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_ingest_publish_errors_total",
			Help: "Publishes to JetStream (effects, or failed completions of rejected rows) that were not acked, by reason: timeout (no ack within EFFECTS_PUBLISH_TIMEOUT) or error (NATS refused or is not connected).",
		}, []string{"reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "effects_ingest_request_duration_seconds",
			Help:    "Time the webhook took to answer a request, from its arrival to the reply, by HTTP status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15), // 500µs to 8s
		}, []string{"code"}),
		durationByCode: make(map[int]prometheus.Observer),
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
		m.durationByCode[code] = m.duration.WithLabelValues(strconv.Itoa(code))
	}
	for _, reason := range []string{publishErrorTimeout, publishErrorError} {
		m.publishErrors.WithLabelValues(reason) // exported at 0 from the start
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
		if m.publishErrors, err = register(reg, m.publishErrors); err != nil {
			return nil, err
		}
		// Only the webhook answers requests and checks consumers; two
		// webhooks on one registry are a mistake and refused.
		if webhook {
			for _, c := range []prometheus.Collector{m.requests, m.duration, m.kindsWithoutConsumer, m.unconsumed} {
				if err := reg.Register(c); err != nil {
					return nil, fmt.Errorf("ingest: register metrics: %w", err)
				}
			}
		}
	}
	return m, nil
}

// outcomes are the outcome label's values, in byKind's order.
var outcomes = [...]string{outcomePublished, outcomeDuplicate, outcomeIgnored, outcomeRejected, outcomeScheduled}

func outcomeIndex(outcome string) int {
	for i, o := range outcomes {
		if o == outcome {
			return i
		}
	}
	return -1
}

// kindCounters are one kind's counters by outcome, each set when first
// used (a series exists only for what happened, as without the cache).
type kindCounters [len(outcomes)]atomic.Value // of prometheus.Counter

// ingest counts an event of kind with its outcome, under a bounded label.
func (m *metrics) ingest(kind, outcome string) {
	i := outcomeIndex(outcome)
	var kc *kindCounters
	if by := m.byKind.Load(); by != nil && i >= 0 {
		if kc = (*by)[kind]; kc != nil {
			if c, ok := kc[i].Load().(prometheus.Counter); ok {
				c.Inc()
				return
			}
		}
	}
	label := m.kinds.Label(kind)
	c := m.ingested.WithLabelValues(label, outcome)
	c.Inc()
	if label != kind || i < 0 {
		return // ~invalid or ~other: not cached, so the cache stays bounded
	}
	if kc != nil {
		kc[i].Store(c)
		return
	}
	for {
		old := m.byKind.Load()
		next := make(map[string]*kindCounters, 1)
		if old != nil {
			if kc := (*old)[kind]; kc != nil {
				kc[i].Store(c)
				return
			}
			maps.Copy(next, *old)
		}
		kc := new(kindCounters)
		kc[i].Store(c)
		next[kind] = kc
		if m.byKind.CompareAndSwap(old, &next) {
			return
		}
	}
}

// Reasons of effects_ingest_publish_errors_total.
const (
	publishErrorTimeout = "timeout"
	publishErrorError   = "error"
)

// publishError counts a publish that was not acked.
func (m *metrics) publishError(reason string) {
	m.publishErrors.WithLabelValues(reason).Inc()
}

// requestDone observes how long a request answered with code took.
func (m *metrics) requestDone(code int, d time.Duration) {
	if o, ok := m.durationByCode[code]; ok {
		o.Observe(d.Seconds())
		return
	}
	m.duration.WithLabelValues(strconv.Itoa(code)).Observe(d.Seconds())
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
