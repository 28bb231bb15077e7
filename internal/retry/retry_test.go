package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestUntilRetriesWithGrowingWaits(t *testing.T) {
	var waits []time.Duration
	calls := 0
	n, ok := Until(context.Background(), Policy{Min: 4 * time.Millisecond, Max: 16 * time.Millisecond},
		func(context.Context) error {
			calls++
			if calls < 5 {
				return errors.New("not yet")
			}
			return nil
		},
		func(err error, n int, wait time.Duration) { waits = append(waits, wait) })
	if !ok || n != 5 || len(waits) != 4 {
		t.Fatalf("n=%d ok=%v waits=%v", n, ok, waits)
	}
	// Nominal backoffs 4, 8, 16, 16ms: each wait is in the upper half.
	for i, nominal := range []time.Duration{4, 8, 16, 16} {
		nominal *= time.Millisecond
		if waits[i] < nominal/2 || waits[i] > nominal {
			t.Errorf("wait %d = %s, want within [%s, %s]", i, waits[i], nominal/2, nominal)
		}
	}
}

func TestUntilStopsWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	n, ok := Until(ctx, Policy{Min: time.Hour, Max: time.Hour},
		func(context.Context) error { calls++; return errors.New("down") },
		func(error, int, time.Duration) { cancel() })
	if ok || n != 1 || calls != 1 {
		t.Fatalf("n=%d ok=%v calls=%d", n, ok, calls)
	}
}

// A Backoff's waits are in the upper half of a backoff that starts at Min
// and doubles to Max; Reset starts again from Min.
func TestBackoff(t *testing.T) {
	b := Policy{Min: 100 * time.Millisecond, Max: time.Second}.Backoff()
	for i, ceil := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		ceil *= time.Millisecond
		if w := b.Next(); w < ceil/2 || w > ceil {
			t.Fatalf("wait %d: %s, want %s to %s", i+1, w, ceil/2, ceil)
		}
	}
	b.Reset()
	if w := b.Next(); w < 50*time.Millisecond || w > 100*time.Millisecond {
		t.Fatalf("after Reset: %s, want 50ms to 100ms", w)
	}
}
