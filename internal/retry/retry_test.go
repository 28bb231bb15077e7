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

func TestDelayDoublesToItsCapWithEqualJitter(t *testing.T) {
	p := Policy{Min: time.Second, Max: 10 * time.Second}
	for n, nominal := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 80: 10 * time.Second, 0: time.Second} {
		seen := map[time.Duration]bool{}
		for range 50 {
			got := p.Delay(n)
			if got < nominal/2 || got > nominal {
				t.Fatalf("failure %d: %s outside [%s, %s]", n, got, nominal/2, nominal)
			}
			seen[got] = true
		}
		if len(seen) < 2 {
			t.Fatalf("failure %d: no jitter", n)
		}
	}
	// A Max below Min is Min; a Min below a millisecond is one.
	if d := (Policy{Min: time.Second, Max: time.Millisecond}).Delay(3); d < time.Second/2 || d > time.Second {
		t.Fatalf("max below min: %s", d)
	}
	if d := (Policy{}).Delay(1); d <= 0 || d > time.Millisecond {
		t.Fatalf("zero policy: %s", d)
	}
}

func TestBackoffStartsAgainAfterReset(t *testing.T) {
	b := Policy{Min: 8 * time.Millisecond, Max: time.Second}.Backoff()
	for i, nominal := range []time.Duration{8, 16, 32} {
		nominal *= time.Millisecond
		if w := b.Next(); w < nominal/2 || w > nominal {
			t.Fatalf("wait %d = %s, want within [%s, %s]", i, w, nominal/2, nominal)
		}
	}
	if b.Failures() != 3 {
		t.Fatalf("failures %d", b.Failures())
	}
	b.Reset()
	if w := b.Next(); w > 8*time.Millisecond {
		t.Fatalf("after reset: %s", w)
	}
}

func TestDoStopsOnAStopError(t *testing.T) {
	fatal := errors.New("refused for good")
	calls := 0
	err := Do(context.Background(), Policy{Min: time.Millisecond, Max: time.Millisecond},
		func(context.Context) error {
			calls++
			if calls < 3 {
				return errors.New("not yet")
			}
			return Stop(fatal)
		}, nil)
	if err != fatal || calls != 3 {
		t.Fatalf("err=%v calls=%d", err, calls)
	}
	if Stop(nil) != nil {
		t.Fatal("Stop(nil) is not nil")
	}
}

func TestDoReturnsTheLastErrorWhenTheContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	down := errors.New("down")
	err := Do(ctx, Policy{Min: time.Hour, Max: time.Hour},
		func(context.Context) error { return down },
		func(error, int, time.Duration) { cancel() })
	if err != down {
		t.Fatalf("err = %v, want the attempt's error", err)
	}
}

func TestUntilRetriesAStopError(t *testing.T) {
	calls := 0
	n, ok := Until(context.Background(), Policy{Min: time.Millisecond, Max: time.Millisecond},
		func(context.Context) error {
			calls++
			if calls < 2 {
				return Stop(errors.New("marked"))
			}
			return nil
		}, nil)
	if !ok || n != 2 {
		t.Fatalf("n=%d ok=%v", n, ok)
	}
}

func TestSleepEndsWithTheContext(t *testing.T) {
	cause := errors.New("stopping")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)
	if err := Sleep(ctx, time.Hour); err != cause {
		t.Fatalf("err = %v", err)
	}
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatal(err)
	}
}
