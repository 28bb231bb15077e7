package schema_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

// Migration 003: rows from before it read as published long ago, new rows
// start unpublished, and an insert notifies the table's channel, for a plain
// and a schema-qualified table.
func TestTableSourceMigration(t *testing.T) {
	pg := testenv.StartPostgres(t)
	for _, table := range []string{"effects", pg.Schema + "_other.fx"} {
		t.Run(table, func(t *testing.T) {
			conn := connect(t, pg.URL)
			ctx := testCtx(t)
			tb, _ := schema.ParseTable(table)
			if tb.Schema != "" {
				t.Cleanup(func() { _, _ = connect(t, pg.URL).Exec(testCtx(t), "DROP SCHEMA "+tb.Schema+" CASCADE") })
			}
			// A table made by hand, with a row, before any migration.
			if tb.Schema != "" {
				if _, err := conn.Exec(ctx, "CREATE SCHEMA "+tb.Schema); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := conn.Exec(ctx, "CREATE TABLE "+tb.Quoted()+" (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), kind text NOT NULL)"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO "+tb.Quoted()+" (kind) VALUES ('old')"); err != nil {
				t.Fatal(err)
			}
			migrate(t, conn, table)

			listener := connect(t, pg.URL)
			if _, err := listener.Exec(ctx, "LISTEN "+tb.NotifyChannel()); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO "+tb.Quoted()+" (kind) VALUES ('new'), ('new2')"); err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if n, err := listener.WaitForNotification(wctx); err != nil || n.Channel != tb.NotifyChannel() {
				t.Fatalf("notification %+v, %v", n, err)
			}

			var old, fresh pgtype.Timestamptz
			if err := conn.QueryRow(ctx, "SELECT published_at FROM "+tb.Quoted()+" WHERE kind = 'old'").Scan(&old); err != nil {
				t.Fatal(err)
			}
			if err := conn.QueryRow(ctx, "SELECT published_at FROM "+tb.Quoted()+" WHERE kind = 'new'").Scan(&fresh); err != nil {
				t.Fatal(err)
			}
			if !old.Valid || old.InfinityModifier != pgtype.NegativeInfinity {
				t.Errorf("a row from before the migration: published_at %+v, want -infinity", old)
			}
			if fresh.Valid {
				t.Errorf("a new row: published_at %+v, want NULL", fresh)
			}
			var unpublished int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+tb.Quoted()+" WHERE published_at IS NULL AND status = 'pending'").Scan(&unpublished); err != nil || unpublished != 2 {
				t.Errorf("unpublished %d, %v; want 2", unpublished, err)
			}
			// Migrating again changes nothing.
			migrate(t, conn, table)
			if v := version(t, conn, table); v != schema.LatestVersion() {
				t.Errorf("version %d", v)
			}
		})
	}
}
