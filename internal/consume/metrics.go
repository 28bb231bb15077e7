package consume

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the readers' series, labelled by stream and consumer.
type Metrics struct {
	recreated    *prometheus.CounterVec
	resumedAt    *prometheus.GaugeVec
	settledAgain *prometheus.CounterVec
	positionUp   *prometheus.GaugeVec
}

// NewMetrics registers the readers' metrics on reg (reusing them if a
// reader of the same process registered them already).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	labels := []string{"stream", "consumer"}
	m := &Metrics{
		recreated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_consumer_recreated_total",
			Help: "Times this process found its durable consumer gone (deleted, or lost with the server's store) and created it again from where it was.",
		}, labels),
		resumedAt: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "effects_consumer_resumed_at_sequence",
			Help: "Stream sequence the consumer was last created again at by this process (after its last ack floor; 0 when the stream itself was new).",
		}, labels),
		settledAgain: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "effects_consumer_settled_again_total",
			Help: "Messages delivered again that this process had already acked or terminated (an ack lost, or the consumer created again below them): settled again without running.",
		}, labels),
		positionUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "effects_consumer_position_up",
			Help: "1 while the consumer's position (its ack floor) could last be recorded in the JetStream bucket " + PositionBucket + ", 0 while recording fails: a consumer lost meanwhile while no process reads it would start again where its configuration says.",
		}, labels),
	}
	var err error
	m.recreated, err = register(reg, m.recreated)
	if err != nil {
		return nil, err
	}
	m.resumedAt, err = register(reg, m.resumedAt)
	if err != nil {
		return nil, err
	}
	m.settledAgain, err = register(reg, m.settledAgain)
	if err != nil {
		return nil, err
	}
	m.positionUp, err = register(reg, m.positionUp)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// series are one consumer's; a nil *series counts nothing.
type series struct {
	recreatedC    prometheus.Counter
	resumedAt     prometheus.Gauge
	settledAgainC prometheus.Counter
	positionUpG   prometheus.Gauge
}

func (m *Metrics) forConsumer(stream, consumer string) *series {
	if m == nil {
		return nil
	}
	// Created now, so that the series exist (at 0) before anything happens.
	s := &series{
		recreatedC:    m.recreated.WithLabelValues(stream, consumer),
		resumedAt:     m.resumedAt.WithLabelValues(stream, consumer),
		settledAgainC: m.settledAgain.WithLabelValues(stream, consumer),
		positionUpG:   m.positionUp.WithLabelValues(stream, consumer),
	}
	s.positionUpG.Set(1)
	return s
}

func (s *series) recreated(at uint64) {
	if s != nil {
		s.recreatedC.Inc()
		s.resumedAt.Set(float64(at))
	}
}

func (s *series) settledAgain() {
	if s != nil {
		s.settledAgainC.Inc()
	}
}

func (s *series) positionUp(up bool) {
	if s == nil {
		return
	}
	if up {
		s.positionUpG.Set(1)
	} else {
		s.positionUpG.Set(0)
	}
}
