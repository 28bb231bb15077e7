package faulttest

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// InstallAudit adds, to the effects table named table (in the connection's
// search_path), a test-only audit table and a row trigger that records every
// UPDATE of the completion columns (status, completion, error, completed_at),
// which only the completer writes. The completer's statement updates a row
// only when its rules let the completion change it, so each audit entry is
// one completion write. Run it after the migration.
func InstallAudit(ctx context.Context, db *pgxpool.Pool, table string) error {
	audit := pgx.Identifier{table + "_completion_audit"}.Sanitize()
	fn := pgx.Identifier{table + "_completion_audit_fn"}.Sanitize()
	trg := pgx.Identifier{table + "_completion_audit"}.Sanitize()
	tbl := pgx.Identifier{table}.Sanitize()
	_, err := db.Exec(ctx, fmt.Sprintf(`
CREATE TABLE IF NOT EXISTS %[1]s (
    id           uuid        NOT NULL,
    old_status   text        NOT NULL,
    new_status   text        NOT NULL,
    completed_at timestamptz,
    written_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS %[4]s ON %[1]s (id);
CREATE OR REPLACE FUNCTION %[2]s() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO %[1]s (id, old_status, new_status, completed_at)
    VALUES (NEW.id, OLD.status, NEW.status, NEW.completed_at);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS %[3]s ON %[5]s;
CREATE TRIGGER %[3]s AFTER UPDATE OF status, completion, error, completed_at ON %[5]s
    FOR EACH ROW EXECUTE FUNCTION %[2]s();
`, audit, fn, trg, pgx.Identifier{table + "_completion_audit_id"}.Sanitize(), tbl))
	if err != nil {
		return fmt.Errorf("faulttest: install the completion audit on %s: %w", table, err)
	}
	return nil
}

// Runs tells how many times the side effect of an effect was done; nil
// leaves "run twice" out of the report.
type Runs func(id string) int

// VerifyOptions are the expectations of a run.
type VerifyOptions struct {
	// Reruns are ids for which a re-run was asked (a MANUAL event,
	// `effects retry`): they may be written twice and run twice.
	Reruns map[string]bool
	// Runs counts the side effects per id (Target.Done).
	Runs Runs
}

// Report is what Verify found. Each list holds effect ids, sorted.
type Report struct {
	// Sent is the number of ids checked.
	Sent int
	// Lost: not succeeded or failed (still pending, or no row at all).
	Lost []string
	// CompletedTwice: more than one completion write, without a re-run
	// asked for (more than two with one).
	CompletedTwice []string
	// RunTwice: the side effect done more than once, without a re-run
	// asked for (more than twice with one).
	RunTwice []string
	// NotRun: final as succeeded but the side effect was never done
	// (only with Runs).
	NotRun []string
	// Statuses counts the final statuses.
	Statuses map[string]int
}

// OK reports no loss, no double completion and no succeeded row without
// its side effect. Run twice is judged by the caller, who knows where the
// design allows it.
func (r Report) OK() bool {
	return len(r.Lost) == 0 && len(r.CompletedTwice) == 0 && len(r.NotRun) == 0
}

func (r Report) String() string {
	s := fmt.Sprintf("sent %d, lost %d, completed twice %d, run twice %d, succeeded but not run %d, statuses %v",
		r.Sent, len(r.Lost), len(r.CompletedTwice), len(r.RunTwice), len(r.NotRun), r.Statuses)
	for _, l := range []struct {
		name string
		ids  []string
	}{{"lost", r.Lost}, {"completed twice", r.CompletedTwice}, {"run twice", r.RunTwice}, {"not run", r.NotRun}} {
		if len(l.ids) > 0 {
			s += fmt.Sprintf("\n  %s (first %d): %v", l.name, min(len(l.ids), 5), l.ids[:min(len(l.ids), 5)])
		}
	}
	return s
}

// Verify reads back every row in ids from table (with InstallAudit's audit)
// and reports what went wrong.
func Verify(ctx context.Context, db *pgxpool.Pool, table string, ids []string, o VerifyOptions) (Report, error) {
	rep := Report{Sent: len(ids), Statuses: map[string]int{}}
	rows, err := db.Query(ctx, fmt.Sprintf(`
SELECT i.id::text, coalesce(e.status, ''),
       (SELECT count(*) FROM %[2]s a WHERE a.id = i.id)
  FROM unnest($1::uuid[]) AS i(id)
  LEFT JOIN %[1]s e ON e.id = i.id`,
		pgx.Identifier{table}.Sanitize(), pgx.Identifier{table + "_completion_audit"}.Sanitize()), ids)
	if err != nil {
		return rep, fmt.Errorf("faulttest: verify: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, status string
		var writes int
		if err := rows.Scan(&id, &status, &writes); err != nil {
			return rep, fmt.Errorf("faulttest: verify: %w", err)
		}
		allowed := 1
		if o.Reruns[id] {
			allowed = 2
		}
		if status == "" {
			status = "(no row)"
		}
		rep.Statuses[status]++
		if status != "succeeded" && status != "failed" {
			rep.Lost = append(rep.Lost, id)
		}
		if writes > allowed {
			rep.CompletedTwice = append(rep.CompletedTwice, id)
		}
		if o.Runs != nil {
			runs := o.Runs(id)
			if runs > allowed {
				rep.RunTwice = append(rep.RunTwice, id)
			}
			if status == "succeeded" && runs == 0 {
				rep.NotRun = append(rep.NotRun, id)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("faulttest: verify: %w", err)
	}
	for _, l := range [][]string{rep.Lost, rep.CompletedTwice, rep.RunTwice, rep.NotRun} {
		slices.Sort(l)
	}
	return rep, nil
}

// Final counts the rows of ids that are succeeded or failed.
func Final(ctx context.Context, db *pgxpool.Pool, table string, ids []string) (int, error) {
	var n int
	err := db.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s WHERE id = ANY($1::uuid[]) AND status IN ('succeeded', 'failed')`,
		pgx.Identifier{table}.Sanitize()), ids).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("faulttest: count final rows: %w", err)
	}
	return n, nil
}
