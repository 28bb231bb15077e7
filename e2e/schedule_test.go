package e2e

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

// TestScheduledEffectsEndToEnd runs the pipeline with each source: effects
// due in a few seconds start neither before their run_at nor more than a
// few seconds after it, on their first attempt, carrying run_at; an effect
// inserted with a run_at in the past runs at once. Through the webhook,
// Hasura's event for a scheduled row is answered "scheduled" and the
// completer's scheduler publishes the row when due; the table source skips
// it the same way.
func TestScheduledEffectsEndToEnd(t *testing.T) {
	for _, source := range []string{"webhook", "table"} {
		t.Run(source, func(t *testing.T) {
			var mu sync.Mutex
			starts := map[string][]effects.Effect{}
			startedAt := map[string]time.Time{}
			reg := effects.NewRegistry()
			reg.Handle("remind", func(_ context.Context, e effects.Effect) (any, error) {
				mu.Lock()
				defer mu.Unlock()
				starts[e.ID] = append(starts[e.ID], e)
				startedAt[e.ID] = time.Now()
				return nil, nil
			})
			o := options{registry: reg}
			if source == "table" {
				o.tableSources = 1
			}
			p := startPipeline(t, o)
			insert := func(runAt string) (string, time.Time) {
				t.Helper()
				var id string
				var at time.Time
				var row json.RawMessage
				if err := p.pg.Pool.QueryRow(context.Background(), `INSERT INTO effects (kind, run_at) VALUES ('remind', `+runAt+`)
					RETURNING id::text, run_at, row_to_json(effects)::text`).Scan(&id, &at, &row); err != nil {
					t.Fatal(err)
				}
				if source == "webhook" {
					_, body := p.event("INSERT", row)
					r := p.post(body)
					if want := at.After(time.Now()); r.Code != 200 || r.Scheduled != want {
						t.Fatalf("run_at %s: reply %+v, want 200 and scheduled %v", runAt, r, want)
					}
				}
				return id, at
			}
			soon1, at1 := insert("now() + interval '3 seconds'")
			soon2, at2 := insert("now() + interval '4 seconds'")
			pastInserted := time.Now()
			past, _ := insert("now() - interval '1 hour'")

			for _, id := range []string{past, soon1, soon2} {
				if r := p.settled(id); r.Status != "succeeded" || r.Attempts != 1 {
					t.Errorf("%s: %+v, want succeeded on attempt 1", id, r)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if n := len(starts[past]); n != 1 || startedAt[past].Sub(pastInserted) > 5*time.Second {
				t.Errorf("the past-due effect started %d times, %s after its insert; want once, at once", n, startedAt[past].Sub(pastInserted))
			}
			if !starts[past][0].RunAt.IsZero() {
				t.Errorf("the past-due effect carries run_at %s, want none (it was not scheduled)", starts[past][0].RunAt)
			}
			for id, at := range map[string]time.Time{soon1: at1, soon2: at2} {
				if n := len(starts[id]); n != 1 {
					t.Fatalf("%s started %d times, want once", id, n)
				}
				s, e := startedAt[id], starts[id][0]
				if s.Before(at) {
					t.Errorf("%s started at %s, before its run_at %s", id, s.Format(time.RFC3339Nano), at.Format(time.RFC3339Nano))
				}
				if late := s.Sub(at); late > 5*time.Second {
					t.Errorf("%s started %s after its run_at, want within 5s", id, late)
				}
				if !e.RunAt.Equal(at) || e.Attempt != 1 {
					t.Errorf("%s: run_at %s attempt %d, want %s and 1", id, e.RunAt, e.Attempt, at)
				}
			}
		})
	}
}
