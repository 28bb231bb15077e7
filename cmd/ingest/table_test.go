package main

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// A kill -9 of the ingest in the middle of publishing loses nothing: what
// its cursor passed was stored by JetStream, what it had read and published
// but not passed is published again by the next ingest (at most the batches
// in flight), and the stream ends with every row exactly once.
func TestTableSourceSurvivesKill9(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	pg := testenv.StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := schema.Migrate(ctx, conn, "effects"); err != nil {
		t.Fatal(err)
	}
	const rows, batch, workers = 20000, 200, 2
	if _, err := conn.Exec(ctx, `INSERT INTO effects (kind, payload) SELECT 'echo', jsonb_build_object('n', g) FROM generate_series(1, $1) g`, rows); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"NATS_URL": n.URL, "DATABASE_URL": pg.URL, "EFFECTS_SOURCE": "table",
		"EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_TABLE_BATCH_SIZE": "200", "EFFECTS_TABLE_WORKERS": "2",
	}
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	first := testenv.StartProcess(t, selector, env)
	// Killed once a few batches went through, in the middle of the rest.
	published := `SELECT count(*) FROM effects e WHERE ` + ingest.PublishedSQL(schema.Table{Name: "effects"}, "e")
	first.WaitFor(t, "a few batches passed", func() bool {
		var marked int
		_ = conn.QueryRow(ctx, published).Scan(&marked)
		return marked >= 3*batch
	})
	first.Signal(t, syscall.SIGKILL)
	first.Wait(t)

	// Rows the cursor passed are a subset of what the stream holds; the
	// difference is at most the batches that were in flight.
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var marked uint64
	if err := conn.QueryRow(ctx, published).Scan(&marked); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed with %d of %d rows marked, %d messages stored", marked, rows, info.State.Msgs)
	if marked >= rows {
		t.Fatalf("the ingest published all %d rows before it was killed; the test needs more rows", rows)
	}
	if marked > info.State.Msgs {
		t.Errorf("%d rows marked published but only %d messages stored", marked, info.State.Msgs)
	}
	if info.State.Msgs-marked > batch*workers {
		t.Errorf("%d messages stored beyond the %d rows marked: more than the %d of the batches in flight", info.State.Msgs-marked, marked, batch*workers)
	}

	second := testenv.StartProcess(t, selector, env)
	second.WaitFor(t, "every row passed", func() bool {
		var passed int
		_ = conn.QueryRow(ctx, published).Scan(&passed)
		return passed == rows
	})
	second.Signal(t, syscall.SIGTERM)
	if code := second.Wait(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, second.Output())
	}
	info, err = stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != rows {
		t.Errorf("stream holds %d messages, want each of the %d rows once", info.State.Msgs, rows)
	}
	// Every row's id is among the stored message ids.
	ids := map[string]bool{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		ids[m.Header.Get(jetstream.MsgIDHeader)] = true
	}
	all, err := conn.Query(ctx, `SELECT id::text FROM effects`)
	if err != nil {
		t.Fatal(err)
	}
	rowIDs, err := pgx.CollectRows(all, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range rowIDs {
		if !ids[id] {
			t.Fatalf("row %s is not in the stream", id)
		}
	}
}

// EFFECTS_SOURCE=table needs DATABASE_URL but no webhook secret.
func TestTableSourceConfig(t *testing.T) {
	t.Parallel()
	base := map[string]string{"NATS_URL": "nats://127.0.0.1:1", "EFFECTS_ADMIN_ADDR": "127.0.0.1:0"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"unknown source", map[string]string{"EFFECTS_SOURCE": "kafka"}, "EFFECTS_SOURCE"},
		{"table without database", map[string]string{"EFFECTS_SOURCE": "table"}, "DATABASE_URL"},
		{"bad batch size", map[string]string{"EFFECTS_SOURCE": "table", "DATABASE_URL": "postgres://u:" + secret + "@h/db", "EFFECTS_TABLE_BATCH_SIZE": "0"}, "EFFECTS_TABLE_BATCH_SIZE"},
		{"both without secret", map[string]string{"EFFECTS_SOURCE": "webhook,table", "DATABASE_URL": "postgres://h/db"}, "EFFECTS_WEBHOOK_SECRET"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := testenv.StartProcess(t, selector, testenv.MergeEnv(base, tc.env))
			if code := p.Wait(t); code != 2 {
				t.Fatalf("exit %d, want 2\n%s", code, p.Output())
			}
			if !strings.Contains(p.Stderr(), tc.want) {
				t.Errorf("no error naming %s\n%s", tc.want, p.Output())
			}
			if strings.Contains(p.Output(), secret) {
				t.Errorf("DATABASE_URL's password was printed\n%s", p.Output())
			}
		})
	}
}
