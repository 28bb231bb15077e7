package e2e

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// The table source end to end, with two ingest replicas: many connections
// insert at once (some transactions rolled back, one long transaction
// committing last), and every committed row completes exactly once — the
// handler ran once for it and its row is succeeded after one attempt —
// while no rolled-back row ever reaches the handler.
func TestTableSourceEndToEnd(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	reg := effects.NewRegistry()
	reg.Handle("count", func(_ context.Context, e effects.Effect) (any, error) {
		mu.Lock()
		calls[e.ID]++
		mu.Unlock()
		return map[string]string{"id": e.ID}, nil
	})
	p := startPipeline(t, options{registry: reg, dispatcher: dispatcher.Config{Concurrency: 32}, tableSources: 2})
	ctx := context.Background()

	long, err := p.pg.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lateID string
	if err := long.QueryRow(ctx, `INSERT INTO effects (kind) VALUES ('count') RETURNING id::text`).Scan(&lateID); err != nil {
		t.Fatal(err)
	}

	const writers, perWriter = 6, 100
	var committed, rolledBack []string
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := 0; i < perWriter; i += 4 {
				tx, err := p.pg.Pool.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				rows, err := tx.Query(ctx, `INSERT INTO effects (kind, payload)
					SELECT 'count', jsonb_build_object('w', $1::int, 'i', g) FROM generate_series(0, 3) g RETURNING id::text`, w)
				if err != nil {
					t.Error(err)
					return
				}
				ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Error(err)
					return
				}
				rollback := (w*perWriter+i)%9 == 0
				if rollback {
					err = tx.Rollback(ctx)
				} else {
					err = tx.Commit(ctx)
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if rollback {
					rolledBack = append(rolledBack, ids...)
				} else {
					committed = append(committed, ids...)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, id := range committed {
		p.settled(id)
	}
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	committed = append(committed, lateID)
	p.settled(lateID)

	var notOnce int
	if err := p.pg.Pool.QueryRow(ctx, `SELECT count(*) FROM effects e WHERE id = ANY($1::uuid[])
		AND NOT (status = 'succeeded' AND attempts = 1 AND completion->>'id' = id::text AND `+
		ingest.PublishedSQL(schema.Table{Name: "effects"}, "e")+`)`,
		committed).Scan(&notOnce); err != nil {
		t.Fatal(err)
	}
	if notOnce != 0 {
		t.Errorf("%d of %d committed rows did not succeed after exactly one attempt", notOnce, len(committed))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range committed {
		if calls[id] != 1 {
			t.Errorf("row %s: handler ran %d times, want once", id, calls[id])
		}
	}
	for _, id := range rolledBack {
		if calls[id] != 0 {
			t.Errorf("rolled-back row %s reached the handler", id)
		}
	}
	if len(calls) != len(committed) {
		t.Errorf("handler saw %d effects, want %d", len(calls), len(committed))
	}
	t.Logf("%d rows committed and completed once, %d rolled back", len(committed), len(rolledBack))
}
