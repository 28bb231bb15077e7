// Package operator is what the operators' tools share: the effects table's
// rows as an operator sees them (list, one row), where a pending effect is
// in JetStream, counts by kind, and re-runs of failed effects. The `effects`
// command (list, show, stats, retry) and the console (pkg/effects/console)
// both call it, so the two cannot drift apart.
//
// Every function takes the database as a [Querier] (a *pgx.Conn for a
// command, a *pgxpool.Pool for the console) and JetStream as a
// jetstream.JetStream the caller connected.
package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/effects-run/effects/internal/retention"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// Querier is what the functions need of the database: *pgx.Conn and
// *pgxpool.Pool have it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Store is one effects table: the database, the table's name and the
// retention in force (to explain a row that is gone).
type Store struct {
	DB        Querier
	Table     schema.Table
	Retention retention.Policy
}

// Statuses are the statuses a row can have, in the order the tools show
// them.
var Statuses = []effects.Status{effects.StatusPending, effects.StatusSucceeded, effects.StatusFailed, effects.StatusCancelled}

// ValidStatus reports whether s is one of [Statuses].
func ValidStatus(s string) bool {
	for _, st := range Statuses {
		if string(st) == s {
			return true
		}
	}
	return false
}

// StatusList is the statuses for a message: "pending, succeeded, failed or
// cancelled".
func StatusList() string {
	names := make([]string, len(Statuses))
	for i, s := range Statuses {
		names[i] = string(s)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// Row is an effect row as the operators' tools show it.
type Row struct {
	ID               string          `json:"id"`
	Kind             string          `json:"kind"`
	Key              *string         `json:"key"`
	Status           string          `json:"status"`
	Attempts         int             `json:"attempts"`
	Error            *string         `json:"error"`
	Payload          json.RawMessage `json:"payload,omitempty"`
	Completion       json.RawMessage `json:"completion"`
	CreatedAt        PGTime          `json:"created_at"`
	CompletedAt      *time.Time      `json:"completed_at"`
	RerunRequestedAt *time.Time      `json:"rerun_requested_at"`
	RerunRequestedBy *string         `json:"rerun_requested_by"`
	CancelledAt      *time.Time      `json:"cancelled_at"`
	CancelledBy      *string         `json:"cancelled_by"`
	// RunAt is the row's run_at: a scheduled effect (run_at after
	// created_at) does not run before it.
	RunAt PGTime `json:"run_at"`
	// Waiting is true for a scheduled effect still waiting in the table
	// for its run_at (pending, not yet published by the scheduler).
	Waiting bool `json:"waiting"`
}

// Scheduled reports whether the row is a scheduled effect: its run_at is
// after its created_at (as SQL compares them, infinities included).
func (r Row) Scheduled() bool {
	run, ok1 := r.RunAt.Finite()
	created, ok2 := r.CreatedAt.Finite()
	switch {
	case r.RunAt.InfinityModifier == pgtype.Infinity:
		return r.CreatedAt.InfinityModifier != pgtype.Infinity
	case !ok1:
		return false
	case !ok2:
		return r.CreatedAt.InfinityModifier == pgtype.NegativeInfinity
	}
	return run.After(created)
}

// Due is when the row runs (or ran) as a list shows it: its run_at for a
// scheduled effect, "-" for any other.
func (r Row) Due() string {
	if !r.Scheduled() {
		return "-"
	}
	return r.RunAt.Format(time.RFC3339)
}

// rowColumns are the columns scanRow reads, payload excluded.
const rowColumns = `id::text, kind, key, status, attempts, error, completion, created_at, completed_at, rerun_requested_at, rerun_requested_by, cancelled_at, cancelled_by,
	run_at, coalesce(status = 'pending' AND published_at IS NULL AND run_at > created_at, false)`

func scanRow(rows pgx.CollectableRow) (Row, error) {
	var r Row
	var completion []byte
	err := rows.Scan(&r.ID, &r.Kind, &r.Key, &r.Status, &r.Attempts, &r.Error, &completion, &r.CreatedAt, &r.CompletedAt, &r.RerunRequestedAt, &r.RerunRequestedBy,
		&r.CancelledAt, &r.CancelledBy, &r.RunAt, &r.Waiting)
	if completion != nil {
		r.Completion = completion
	}
	return r, err
}

// ExplainQueryError adds a hint to a database error about a missing column
// (a table not migrated to this version).
func ExplainQueryError(err error) error {
	if err != nil && strings.Contains(err.Error(), "SQLSTATE 42703") {
		return fmt.Errorf("%w (is the table migrated to this version? the services migrate it at start)", err)
	}
	return err
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
