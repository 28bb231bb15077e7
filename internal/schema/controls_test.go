package schema_test

import (
	"strings"
	"testing"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

// Migration 007 (controls) on a table that already holds rows in every status and a
// status check of its own, under another name and schema-qualified: the rows
// stay, the check is replaced by one that also allows 'cancelled' (and
// still refuses anything else), and the paused kinds' table sits next to
// the table.
func TestControlsMigration(t *testing.T) {
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	ctx := testCtx(t)
	if _, err := conn.Exec(ctx, `
		CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), kind text NOT NULL, status text NOT NULL DEFAULT 'pending',
		    CONSTRAINT outbox_status_check CHECK (status IN ('pending', 'succeeded', 'failed')));
		INSERT INTO outbox (kind, status) VALUES ('a', 'pending'), ('b', 'succeeded'), ('c', 'failed')`); err != nil {
		t.Fatal(err)
	}
	migrate(t, conn, pg.Schema+".outbox")
	if v := schema.MigrationVersion("_controls.sql"); v == 0 || schema.LatestVersion() < v {
		t.Fatalf("latest version %d, the controls' migration %d", schema.LatestVersion(), v)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM outbox WHERE cancelled_at IS NULL AND cancelled_by IS NULL`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("rows after the migration: %d, %v", n, err)
	}
	if _, err := conn.Exec(ctx, `UPDATE outbox SET status = 'cancelled', cancelled_at = now(), cancelled_by = 'alice' WHERE kind = 'a'`); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if _, err := conn.Exec(ctx, `UPDATE outbox SET status = 'stopped' WHERE kind = 'b'`); err == nil || !strings.Contains(err.Error(), "outbox_status_check") {
		t.Fatalf("a status that is not one: %v", err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO outbox_paused (kind, paused, paused_at) VALUES ('a', true, now())`); err != nil {
		t.Fatalf("outbox_paused: %v", err)
	}
}
