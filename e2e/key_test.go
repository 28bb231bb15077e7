package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/schemas"
)

// Keyed rows through each ingest source, the real dispatcher and completer:
// the source accepts a row with a key (the webhook receives it in
// event.data.new, the table source reads its own columns); while the effect
// runs its key refuses a second pending row and ON CONFLICT skips one; once
// the completer has written it succeeded, and then failed, the key is free
// for the next row.
func TestKeyedEffectsEndToEnd(t *testing.T) {
	validator, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	for _, source := range []string{"webhook", "table"} {
		t.Run(source, func(t *testing.T) {
			started := make(chan string, 8)
			release := make(chan struct{}, 8)
			reg := effects.NewRegistry()
			reg.Handle("sync_customer", func(ctx context.Context, e effects.Effect) (any, error) {
				started <- e.ID
				select {
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				var p struct{ Fail bool }
				if err := json.Unmarshal(e.Payload, &p); err != nil {
					return nil, effects.Permanent(err)
				}
				if p.Fail {
					return nil, effects.Permanent(errors.New("told to fail"))
				}
				return map[string]string{"synced": e.ID}, nil
			})
			o := options{registry: reg, dispatcher: dispatcher.Config{Concurrency: 4}}
			if source == "table" {
				o.tableSources = 1
			}
			p := startPipeline(t, o)
			ctx := context.Background()

			// insert adds a row with the key the way a client does and,
			// for the webhook, delivers it as Hasura would.
			insert := func(payload string) string {
				t.Helper()
				var id string
				var row json.RawMessage
				err := p.pg.Pool.QueryRow(ctx, `INSERT INTO effects (kind, key, payload) VALUES ('sync_customer', 'customer-42', $1::jsonb)
					RETURNING id::text, row_to_json(effects)::text`, payload).Scan(&id, &row)
				if err != nil {
					t.Fatalf("insert: %v", err)
				}
				if source == "webhook" {
					var fields map[string]any
					if err := json.Unmarshal(row, &fields); err != nil || fields["key"] != "customer-42" {
						t.Fatalf("the event's row lacks the key: %s", row)
					}
					_, body := p.event("INSERT", row)
					if err := validator.HasuraEvent(body); err != nil {
						t.Errorf("the keyed Hasura body does not match schemas/v1: %v", err)
					}
					if r := p.post(body); r.Code != 200 || r.EffectID != id || r.Rejected != "" {
						t.Fatalf("webhook reply %+v", r)
					}
				}
				return id
			}
			run := func(id string, want effects.Status) {
				t.Helper()
				select {
				case got := <-started:
					if got != id {
						t.Fatalf("the handler started %s, want %s", got, id)
					}
				case <-time.After(30 * time.Second):
					t.Fatalf("the handler did not start %s", id)
				}
				release <- struct{}{}
				if r := p.settled(id); r.Status != string(want) {
					t.Fatalf("row %s: %+v, want %s", id, r, want)
				}
			}

			first := insert(`{}`)
			// While it runs (pending), the key refuses a second row.
			select {
			case <-started:
			case <-time.After(30 * time.Second):
				t.Fatal("the handler did not start the first effect")
			}
			_, err := p.pg.Pool.Exec(ctx, `INSERT INTO effects (kind, key) VALUES ('sync_customer', 'customer-42')`)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "23505" {
				t.Errorf("a second pending row of the key: %v, want a unique violation", err)
			}
			tag, err := p.pg.Pool.Exec(ctx, `INSERT INTO effects (kind, key) VALUES ('sync_customer', 'customer-42')
				ON CONFLICT (kind, key) WHERE status = 'pending' DO NOTHING`)
			if err != nil || tag.RowsAffected() != 0 {
				t.Errorf("ON CONFLICT insert: %v, %d rows; want none", err, tag.RowsAffected())
			}
			release <- struct{}{}
			if r := p.settled(first); r.Status != string(effects.StatusSucceeded) {
				t.Fatalf("first: %+v", r)
			}
			// Succeeded: the key is free. The next one fails; free again.
			run(insert(`{"fail": true}`), effects.StatusFailed)
			run(insert(`{}`), effects.StatusSucceeded)

			var rows, pending int
			if err := p.pg.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM effects WHERE key = 'customer-42'`).
				Scan(&rows, &pending); err != nil || rows != 3 || pending != 0 {
				t.Errorf("rows of the key: %d, %d pending (%v); want 3, none pending", rows, pending, err)
			}
		})
	}
}
