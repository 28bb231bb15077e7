package operator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
)

// Filter selects rows for [Store.List]. Zero values filter nothing.
type Filter struct {
	Status string        // one of Statuses, or "" for any
	Kind   string        // "" for any
	Key    string        // "" for any
	Since  time.Duration // only rows created in this last span; 0: any age
	Limit  int           // at most this many rows (required, > 0)
}

// List returns up to f.Limit rows, newest first (created_at, then id,
// descending), payloads left out.
//
// The table has no index on created_at over all rows, only one per status
// (partial indexes), so "the newest rows" is asked of each status's index
// and the answers merged: each branch reads at most Limit entries of its
// index backwards, where a single ORDER BY over the table would sort all of
// it. The status is written into the SQL (it is one of Statuses, checked):
// a generic plan cannot match a partial index to a parameter.
func (s Store) List(ctx context.Context, f Filter) ([]Row, error) {
	if f.Limit <= 0 {
		return nil, fmt.Errorf("list: limit %d: want 1 or more", f.Limit)
	}
	statuses := Statuses
	if f.Status != "" {
		if !ValidStatus(f.Status) {
			return nil, fmt.Errorf("list: status %q: want %s", f.Status, StatusList())
		}
		statuses = nil
		for _, st := range Statuses {
			if string(st) == f.Status {
				statuses = append(statuses, st)
			}
		}
	}
	var sinceArg *time.Duration
	if f.Since > 0 {
		sinceArg = &f.Since
	}
	q := listSQL(s.Table, statuses)
	rs, err := s.DB.Query(ctx, q, nullIfEmpty(f.Kind), sinceArg, f.Limit, nullIfEmpty(f.Key))
	if err != nil {
		return nil, ExplainQueryError(err)
	}
	out, err := pgx.CollectRows(rs, scanRow)
	if out == nil {
		out = []Row{}
	}
	return out, ExplainQueryError(err)
}

// listSQL is List's statement for these statuses: $1 the kind or NULL,
// $2 the window or NULL, $3 the limit, $4 the key or NULL. No index has
// the key of final rows (the key's own holds pending rows only), so a list
// by key reads the rows, as `effects list --key` always did.
func listSQL(table schema.Table, statuses []effects.Status) string {
	branches := make([]string, len(statuses))
	for i, st := range statuses {
		branches[i] = `(SELECT ` + rowColumns + ` FROM ` + table.Quoted() + `
	       WHERE status = '` + string(st) + `'
	         AND ($1::text IS NULL OR kind = $1)
	         AND ($2::interval IS NULL OR created_at >= now() - $2::interval)
	         AND ($4::text IS NULL OR key = $4)
	       ORDER BY created_at DESC, id DESC
	       LIMIT $3)`
	}
	return `SELECT * FROM (` + strings.Join(branches, "\n UNION ALL ") + `) AS newest
	       ORDER BY created_at DESC, id DESC LIMIT $3`
}

// Get returns the row of effect id with its payload, or nil when there is
// none.
func (s Store) Get(ctx context.Context, id string) (*Row, error) {
	rows, err := s.DB.Query(ctx, `SELECT `+rowColumns+`, payload FROM `+s.Table.Quoted()+` WHERE id = $1`, id)
	if err != nil {
		return nil, ExplainQueryError(err)
	}
	r, err := pgx.CollectOneRow(rows, func(rs pgx.CollectableRow) (Row, error) {
		var r Row
		var completion, payload []byte
		err := rs.Scan(&r.ID, &r.Kind, &r.Key, &r.Status, &r.Attempts, &r.Error, &completion, &r.CreatedAt, &r.CompletedAt,
			&r.RerunRequestedAt, &r.RerunRequestedBy, &r.CancelledAt, &r.CancelledBy, &r.RunAt, &r.Waiting, &payload)
		if completion != nil {
			r.Completion = completion
		}
		r.Payload = payload
		return r, err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, ExplainQueryError(err)
	}
	return &r, nil
}

// Table source states of a pending row ([Store.TableSourceState]).
const (
	SourcePublished = "published" // the table source's cursor passed the row
	SourceWaiting   = "waiting"   // its cursor has not reached the row yet
)

// TableSourceState says whether the table source's cursor passed row id:
// SourcePublished or SourceWaiting, or "" when no table source ever ran on
// the table (its rows are published by the webhook, or not yet at all).
func (s Store) TableSourceState(ctx context.Context, id string) (string, error) {
	var hasCursor, published bool
	err := s.DB.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+s.Table.CursorTable().Quoted()+`),
		`+ingest.PublishedSQL(s.Table, "e")+` FROM `+s.Table.Quoted()+` e WHERE id = $1`, id).Scan(&hasCursor, &published)
	switch {
	case err != nil:
		return "", ExplainQueryError(err)
	case !hasCursor:
		return "", nil
	case published:
		return SourcePublished, nil
	}
	return SourceWaiting, nil
}
