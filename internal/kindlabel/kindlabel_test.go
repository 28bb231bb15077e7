package kindlabel

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

func TestCapAndKnownKinds(t *testing.T) {
	s := New(3, "send_email", "bad.kind")
	for _, k := range []string{"a", "b", "c"} {
		if got := s.Label(k); got != k {
			t.Errorf("Label(%q) = %q while under the cap", k, got)
		}
	}
	if got := s.Label("d"); got != Other {
		t.Errorf("Label(d) = %q beyond the cap, want %q", got, Other)
	}
	for _, k := range []string{"a", "send_email"} {
		if got := s.Label(k); got != k {
			t.Errorf("Label(%q) = %q: a kind seen or known keeps its label", k, got)
		}
	}
	if got := New(3).Label("bad.kind"); got != Invalid {
		t.Errorf("Label(bad.kind) = %q, want %q", got, Invalid)
	}
}

// Test5000RandomKinds: 5000 distinct kinds, from many goroutines, give at
// most the cap plus one label values.
func Test5000RandomKinds(t *testing.T) {
	s := New(0)
	var mu sync.Mutex
	labels := map[string]bool{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 625 {
				l := s.Label(fmt.Sprintf("k%d_%d_%x", g, i, rand.Uint64()))
				mu.Lock()
				labels[l] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(labels) != DefaultMax+1 || !labels[Other] {
		t.Errorf("%d label values, want %d (the cap and %q)", len(labels), DefaultMax+1, Other)
	}
}
