package ingest

import (
	"context"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/pkg/effects"
)

// consumerInfoTimeout bounds the JetStream requests of one scrape, well
// under Prometheus's default scrape timeout of 10s.
const consumerInfoTimeout = 3 * time.Second

// anyKindLabel labels a consumer whose filter is not one kind's subject (a
// wildcard, several subjects, or none). Not a valid kind.
const anyKindLabel = "~any"

var (
	consumerPendingDesc = prometheus.NewDesc("effects_consumer_pending",
		"Effects in the EFFECTS stream not yet delivered to the consumers of each kind (JetStream's num_pending, summed over the kind's consumers; read at scrape time).",
		[]string{"kind"}, nil)
	consumerAckPendingDesc = prometheus.NewDesc("effects_consumer_ack_pending",
		"Effects delivered to the consumers of each kind and not acked yet: running, or waiting out a crashed dispatcher's ack wait (num_ack_pending; read at scrape time).",
		[]string{"kind"}, nil)
	consumerRedeliveredDesc = prometheus.NewDesc("effects_consumer_redelivered",
		"Effects of each kind delivered more than once and not acked yet (num_redelivered; read at scrape time).",
		[]string{"kind"}, nil)
	consumerInfoUpDesc = prometheus.NewDesc("effects_consumer_info_up",
		"1 if this scrape read the consumers of the EFFECTS stream from JetStream, 0 if it could not (NATS down, the stream missing, no answer within 3s): the effects_consumer_* series are then missing.",
		nil, nil)
)

// consumerCollector reads the consumers of the EFFECTS stream when scraped,
// so the numbers are as fresh as the scrape and cost nothing between scrapes.
// The ingest exports them rather than the dispatcher: it sees every consumer
// of the stream, whichever deployment made it, and keeps reporting a kind's
// backlog while that kind's dispatchers are down, which is when it matters.
type consumerCollector struct {
	js    jetstream.JetStream
	kinds *kindlabel.Set
}

func (c *consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- consumerPendingDesc
	ch <- consumerAckPendingDesc
	ch <- consumerRedeliveredDesc
	ch <- consumerInfoUpDesc
}

type consumerCounts struct{ pending, ackPending, redelivered float64 }

func (c *consumerCollector) Collect(ch chan<- prometheus.Metric) {
	byKind, ok := c.read()
	up := 0.0
	if ok {
		up = 1
		for kind, n := range byKind {
			ch <- prometheus.MustNewConstMetric(consumerPendingDesc, prometheus.GaugeValue, n.pending, kind)
			ch <- prometheus.MustNewConstMetric(consumerAckPendingDesc, prometheus.GaugeValue, n.ackPending, kind)
			ch <- prometheus.MustNewConstMetric(consumerRedeliveredDesc, prometheus.GaugeValue, n.redelivered, kind)
		}
	}
	ch <- prometheus.MustNewConstMetric(consumerInfoUpDesc, prometheus.GaugeValue, up)
}

// read lists the consumers of the EFFECTS stream, their counts summed by
// kind label (several kinds can share ~other).
func (c *consumerCollector) read() (map[string]consumerCounts, bool) {
	if nc := c.js.Conn(); nc != nil && !nc.IsConnected() {
		return nil, false // a request would wait in the reconnect buffer
	}
	ctx, cancel := context.WithTimeout(context.Background(), consumerInfoTimeout)
	defer cancel()
	stream, err := c.js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		return nil, false
	}
	byKind := make(map[string]consumerCounts)
	lister := stream.ListConsumers(ctx)
	for ci := range lister.Info() {
		label := c.label(ci.Config)
		n := byKind[label]
		n.pending += float64(ci.NumPending)
		n.ackPending += float64(ci.NumAckPending)
		n.redelivered += float64(ci.NumRedelivered)
		byKind[label] = n
	}
	if lister.Err() != nil {
		return nil, false
	}
	return byKind, true
}

// label is the kind label of a consumer: its kind when it filters on one
// kind's subject, else ~any.
func (c *consumerCollector) label(cfg jetstream.ConsumerConfig) string {
	filter := cfg.FilterSubject
	if len(cfg.FilterSubjects) == 1 {
		filter = cfg.FilterSubjects[0]
	} else if len(cfg.FilterSubjects) > 1 {
		return anyKindLabel
	}
	kind, ok := strings.CutPrefix(filter, effects.SubjectPrefix)
	if !ok || strings.ContainsAny(kind, "*>") || effects.ValidateKind(kind) != nil {
		return anyKindLabel
	}
	return c.kinds.Label(kind)
}
