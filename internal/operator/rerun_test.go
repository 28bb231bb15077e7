package operator_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// A cancelled effect is not re-run: the completer leaves a cancelled row as
// it is, so the re-run's outcome would be lost. Nothing is published or
// recorded. "Retry all failed" (skipRerunning) leaves out a row whose
// re-run has not completed yet.
func TestRerunRefusesCancelledAndSkipsRerunning(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg := testenv.StartMigrated(t)
	n := testenv.StartNATS(t)
	nc, js := n.Connect(t)
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	table, err := schema.ParseTable("effects")
	if err != nil {
		t.Fatal(err)
	}
	s := operator.Store{DB: pg.Pool, Table: table}
	var cancelled, failed, again string
	if err := pg.Pool.QueryRow(ctx, `INSERT INTO effects (kind, status, cancelled_at, completed_at) VALUES ('echo', 'cancelled', now(), now())
		RETURNING id::text`).Scan(&cancelled); err != nil {
		t.Fatal(err)
	}
	for _, id := range []*string{&failed, &again} {
		if err := pg.Pool.QueryRow(ctx, `INSERT INTO effects (kind, status, completed_at) VALUES ('echo', 'failed', now() - interval '1 minute')
			RETURNING id::text`).Scan(id); err != nil {
			t.Fatal(err)
		}
	}

	res := s.Rerun(ctx, js, nc.MaxPayload(), cancelled, operator.RerunOptions{By: "alice"})
	if res.Outcome != operator.RetryError || !strings.Contains(res.Error, "it was cancelled") || res.Status != "cancelled" {
		t.Errorf("re-run of a cancelled effect: %+v", res)
	}
	var marked bool
	if err := pg.Pool.QueryRow(ctx, `SELECT rerun_requested_at IS NOT NULL FROM effects WHERE id = $1`, cancelled).Scan(&marked); err != nil || marked {
		t.Errorf("the cancelled row was marked (%v)", err)
	}

	ids, err := s.FailedIDs(ctx, "", 0, 10, true)
	if err != nil || len(ids) != 2 {
		t.Fatalf("failed ids %v, %v", ids, err)
	}
	if res := s.Rerun(ctx, js, nc.MaxPayload(), again, operator.RerunOptions{Selected: true}); res.Outcome != operator.Retried {
		t.Fatalf("re-run: %+v", res)
	}
	if ids, err := s.FailedIDs(ctx, "", 0, 10, true); err != nil || len(ids) != 1 || ids[0] != failed {
		t.Errorf("with a re-run under way: %v, %v; want only %s", ids, err, failed)
	}
	if ids, err := s.FailedIDs(ctx, "", 0, 10, false); err != nil || len(ids) != 2 {
		t.Errorf("without skipping: %v, %v", ids, err)
	}
	// Its re-run completed (failed again, later): selectable again.
	if _, err := pg.Pool.Exec(ctx, `UPDATE effects SET completed_at = now() + interval '1 second' WHERE id = $1`, again); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.FailedIDs(ctx, "", 0, 10, true); err != nil || len(ids) != 2 {
		t.Errorf("after the re-run completed: %v, %v", ids, err)
	}
}
