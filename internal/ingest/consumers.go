package ingest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
)

// consumerCheckTimeout bounds one check's requests to JetStream.
const consumerCheckTimeout = 10 * time.Second

// watchConsumers reports, every cfg.ConsumerCheckInterval until ctx ends,
// the kinds whose effects sit in the EFFECTS stream while no consumer's
// filter takes them: a kind no dispatcher registers (a typo, a dispatcher
// not deployed yet, a consumer deleted) would otherwise wait out the stream's
// retention in silence. It sets effects_kinds_without_consumer and
// effects_unconsumed_kind_messages, and logs when the set of such kinds
// changes.
func (s *Server) watchConsumers(ctx context.Context) {
	t := time.NewTicker(s.cfg.ConsumerCheckInterval)
	defer t.Stop()
	var last []string
	for {
		kinds, err := s.checkConsumers(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.logger.Debug("checking the effect kinds against the consumers failed", "error", err)
		case !slices.Equal(kinds, last):
			if len(kinds) > 0 {
				shown := kinds[:min(len(kinds), 20)]
				s.logger.Warn("effects of kinds no consumer takes are waiting in the stream: no dispatcher (or other consumer) "+
					"handles them, and they will expire unhandled after EFFECTS_STREAM_MAX_AGE",
					"kinds", shown, "count", len(kinds), "stream", effects.EffectsStream)
			} else if len(last) > 0 {
				s.logger.Info("every kind with effects in the stream has a consumer again")
			}
			last = kinds
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkConsumers returns, sorted, the kinds with messages in the EFFECTS
// stream that no consumer's filter subject matches, and sets the metrics.
func (s *Server) checkConsumers(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, consumerCheckTimeout)
	defer cancel()
	stream, err := s.js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", effects.EffectsStream, err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(effects.EffectsSubjects))
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", effects.EffectsStream, err)
	}
	var filters []string
	lister := stream.ListConsumers(ctx)
	for ci := range lister.Info() {
		if len(ci.Config.FilterSubjects) > 0 {
			filters = append(filters, ci.Config.FilterSubjects...)
		} else {
			filters = append(filters, ci.Config.FilterSubject) // "" takes every subject
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("list consumers of %s: %w", effects.EffectsStream, err)
	}
	var kinds []string
	s.metrics.unconsumed.Reset()
	for subject, n := range info.State.Subjects {
		if n == 0 || slices.ContainsFunc(filters, func(f string) bool { return subjectMatches(f, subject) }) {
			continue
		}
		kind := strings.TrimPrefix(subject, effects.SubjectPrefix)
		kinds = append(kinds, kind)
		s.metrics.unconsumed.WithLabelValues(s.metrics.kinds.Label(kind)).Add(float64(n))
	}
	slices.Sort(kinds)
	s.metrics.kindsWithoutConsumer.Set(float64(len(kinds)))
	return kinds, nil
}

// subjectMatches reports whether filter (which may hold the wildcards * and
// >; empty matches everything) matches subject.
func subjectMatches(filter, subject string) bool {
	if filter == "" || filter == ">" {
		return true
	}
	ft, st := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, f := range ft {
		if f == ">" {
			return len(st) > i
		}
		if i >= len(st) || (f != "*" && f != st[i]) {
			return false
		}
	}
	return len(ft) == len(st)
}
