// Package kindlabel bounds the cardinality of the "kind" label of every
// service's metrics. Kinds come from rows that anyone allowed to insert one
// may invent; without a bound, each distinct kind would add Prometheus series
// for the life of the process (5,000 random kinds, 5,000 series per metric).
//
// A [Set] gives the first Max distinct kinds it sees (and any kinds it was
// told about up front) a label of their own, and counts every later kind
// under [Other]. A kind that is not valid is labelled [Invalid].
package kindlabel

import (
	"sync"

	"github.com/effects-run/effects/pkg/effects"
)

const (
	// Other is the label of the kinds beyond the cap. It is not a valid
	// kind, so it can never be mistaken for one.
	Other = "~other"
	// Invalid is the label of a kind that is not valid.
	Invalid = "~invalid"
	// DefaultMax is the cap a zero Max stands for.
	DefaultMax = 100
)

// Set hands out kind labels. The zero value is not usable; call [New]. It is
// safe for concurrent use.
type Set struct {
	max  int
	mu   sync.RWMutex
	seen map[string]struct{}
}

// New returns a set giving up to max kinds (DefaultMax when max <= 0) a label
// of their own, beyond those in known, which always get their own (the
// kinds a dispatcher registered, or the ingest's allow-list).
func New(max int, known ...string) *Set {
	if max <= 0 {
		max = DefaultMax
	}
	s := &Set{max: max, seen: make(map[string]struct{}, len(known))}
	for _, k := range known {
		if effects.ValidateKind(k) == nil {
			s.seen[k] = struct{}{}
		}
	}
	s.max += len(s.seen)
	return s
}

// Label returns the label value for kind: the kind itself while there is
// room (or it already has one), else [Other]; [Invalid] for a kind that is
// not valid.
func (s *Set) Label(kind string) string {
	s.mu.RLock()
	_, ok := s.seen[kind]
	full := len(s.seen) >= s.max
	s.mu.RUnlock()
	switch {
	case ok:
		return kind
	case effects.ValidateKind(kind) != nil:
		return Invalid
	case full:
		return Other
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[kind]; ok {
		return kind
	}
	if len(s.seen) >= s.max {
		return Other
	}
	s.seen[kind] = struct{}{}
	return kind
}
