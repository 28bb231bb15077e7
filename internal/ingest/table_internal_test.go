package ingest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/effects-run/effects/internal/testenv"
)

// TestTableSourceMarksByCTID: the mark finds the claimed rows by the ctid the
// claim returned (a TID scan), planned with a real batch's values (as the
// first runs of a prepared statement are), and marks exactly the claimed
// rows. By id, the planner scanned the whole table for a batch of 500.
func TestTableSourceMarksByCTID(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pg := testenv.StartEffectsTable(t, 20000)
	_, js := testenv.StartNATS(t).Connect(t)
	s, err := NewTableSource(TableConfig{DatabaseURL: pg.URL}, pg.Pool, js, nil, nil)
	if err != nil {
		t.Fatal(err)
	}

	tx, err := pg.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rows, err := tx.Query(ctx, s.claimSQL, 500)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	var ctids []pgtype.TID
	for rows.Next() {
		var r claimedRow
		var createdAt pgtype.Timestamptz
		if err := rows.Scan(&r.id, &r.kind, &r.payload, &createdAt, &r.ctid); err != nil {
			t.Fatal(err)
		}
		ids, ctids = append(ids, r.id), append(ctids, r.ctid)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 500 {
		t.Fatalf("claimed %d rows, want 500", len(ids))
	}

	plan := testenv.Explain(ctx, t, tx, s.markSQL, ctids, ids)
	if !strings.Contains(plan, "Tid Scan") || strings.Contains(plan, "Seq Scan on effects") {
		t.Fatalf("the mark does not find its rows by ctid:\n%s", plan)
	}

	tag, err := tx.Exec(ctx, s.markSQL, ctids, ids)
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() != 500 {
		t.Fatalf("marked %d rows, want 500", tag.RowsAffected())
	}
	var marked, claimedMarked int
	if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE published_at IS NOT NULL),
	        count(*) FILTER (WHERE published_at IS NOT NULL AND id = ANY($1::uuid[])) FROM effects`, ids).Scan(&marked, &claimedMarked); err != nil {
		t.Fatal(err)
	}
	if marked != 500 || claimedMarked != 500 {
		t.Fatalf("%d rows marked, %d of them claimed; want the 500 claimed rows only", marked, claimedMarked)
	}
}
