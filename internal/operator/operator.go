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
}

// rowColumns are the columns scanRow reads, payload excluded.
const rowColumns = `id::text, kind, key, status, attempts, error, completion, created_at, completed_at, rerun_requested_at, rerun_requested_by, cancelled_at, cancelled_by`

func scanRow(rows pgx.CollectableRow) (Row, error) {
	var r Row
	var completion []byte
	err := rows.Scan(&r.ID, &r.Kind, &r.Key, &r.Status, &r.Attempts, &r.Error, &completion, &r.CreatedAt, &r.CompletedAt, &r.RerunRequestedAt, &r.RerunRequestedBy,
		&r.CancelledAt, &r.CancelledBy)
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
