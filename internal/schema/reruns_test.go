package schema_test

import (
	"testing"
	"time"

	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
)

// Migration 004: a table made by hand with rows gains the re-run columns,
// NULL for every row, and they take what `effects retry` writes.
func TestRerunsMigration(t *testing.T) {
	pg := testenv.StartPostgres(t)
	conn := connect(t, pg.URL)
	ctx := testCtx(t)
	if _, err := conn.Exec(ctx, "CREATE TABLE effects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), kind text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	var id string
	if err := conn.QueryRow(ctx, "INSERT INTO effects (kind) VALUES ('old') RETURNING id::text").Scan(&id); err != nil {
		t.Fatal(err)
	}
	migrate(t, conn, "effects")
	if schema.LatestVersion() < 4 {
		t.Fatalf("latest version %d, want at least 4", schema.LatestVersion())
	}
	var at *time.Time
	var by *string
	if err := conn.QueryRow(ctx, "SELECT rerun_requested_at, rerun_requested_by FROM effects WHERE id = $1", id).Scan(&at, &by); err != nil {
		t.Fatal(err)
	}
	if at != nil || by != nil {
		t.Errorf("an existing row: rerun_requested_at %v, rerun_requested_by %v; want NULL", at, by)
	}
	if _, err := conn.Exec(ctx, "UPDATE effects SET rerun_requested_at = now(), rerun_requested_by = 'alice' WHERE id = $1", id); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT rerun_requested_at, rerun_requested_by FROM effects WHERE id = $1", id).Scan(&at, &by); err != nil {
		t.Fatal(err)
	}
	if at == nil || by == nil || *by != "alice" {
		t.Errorf("after a re-run: %v %v", at, by)
	}
}
