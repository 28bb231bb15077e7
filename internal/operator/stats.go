package operator

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/control"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// Stats are a table's counts by kind and status.
type Stats struct {
	Table string `json:"table"`
	// Since is the window ("" for the whole table).
	Since string      `json:"since,omitempty"`
	Total StatusCount `json:"total"`
	// OldestPendingAge is the age of the oldest pending row ("" if none).
	OldestPendingAge string      `json:"oldest_pending_age,omitempty"`
	Kinds            []KindStats `json:"kinds"`
	// NATS is true when the consumers were read ([ConsumerFigures]).
	NATS bool `json:"nats"`
}

// StatusCount is a number of rows per status.
type StatusCount struct {
	Pending   int64 `json:"pending"`
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
	Cancelled int64 `json:"cancelled"`
}

func (c *StatusCount) add(status string, n int64) {
	switch effects.Status(status) {
	case effects.StatusPending:
		c.Pending += n
	case effects.StatusSucceeded:
		c.Succeeded += n
	case effects.StatusFailed:
		c.Failed += n
	case effects.StatusCancelled:
		c.Cancelled += n
	}
}

// KindStats are one kind's figures.
type KindStats struct {
	Kind string `json:"kind"`
	StatusCount
	OldestPendingAge string `json:"oldest_pending_age,omitempty"`
	// Paused is the kind's pause (effects pause), nil when it is not
	// paused (PostgreSQL's word; the dispatchers follow it).
	Paused   *PauseStats    `json:"paused,omitempty"`
	Consumer *ConsumerStats `json:"consumer,omitempty"`
}

// PauseStats is a kind's pause in force.
type PauseStats struct {
	Since time.Time `json:"since"`
	By    *string   `json:"by"`
}

// ConsumerStats are a kind's dispatcher consumer's figures.
type ConsumerStats struct {
	Name  string `json:"name"`
	Found bool   `json:"found"`
	// NumPending: messages not delivered yet (the backlog); AckPending:
	// delivered and not acknowledged; Redelivered: delivered more than once
	// and not acknowledged.
	NumPending  uint64 `json:"num_pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
}

// CountStats counts the rows created in the last since (0: the whole table,
// a full count) by kind and status, with the oldest pending row's age and
// the paused kinds.
func (s Store) CountStats(ctx context.Context, since time.Duration) (*Stats, error) {
	var sinceArg *time.Duration
	rep := &Stats{Table: s.Table.String(), Kinds: []KindStats{}}
	if since > 0 {
		sinceArg = &since
		rep.Since = since.String()
	}
	return s.count(ctx, rep, `SELECT kind, status, count(*), extract(epoch FROM now() - min(GREATEST(created_at, run_at)) FILTER (WHERE status = 'pending' AND isfinite(GREATEST(created_at, run_at))))::float8
	      FROM `+s.Table.Quoted()+`
	     WHERE ($1::interval IS NULL OR created_at >= now() - $1::interval)
	     GROUP BY kind, status`, sinceArg)
}

// CountOpen counts, by kind, the rows still waiting for an outcome, failed
// or cancelled (the rows an operator acts on or looks for), with the oldest
// pending row's age and the paused kinds; Succeeded is left zero. Each
// status is read through its partial index, so the cost is the number of
// such rows, not the table's size.
func (s Store) CountOpen(ctx context.Context) (*Stats, error) {
	return s.count(ctx, &Stats{Table: s.Table.String(), Kinds: []KindStats{}}, countOpenSQL(s.Table))
}

// count runs a counting query (rows of kind, status, count, age of the
// oldest pending row in seconds or NULL) into rep and adds the pauses.
func (s Store) count(ctx context.Context, rep *Stats, sql string, args ...any) (*Stats, error) {
	rows, err := s.DB.Query(ctx, sql, args...)
	if err != nil {
		return nil, ExplainQueryError(err)
	}
	if err := collectCounts(rows, rep); err != nil {
		return nil, ExplainQueryError(err)
	}
	if err := s.addPauses(ctx, rep); err != nil {
		return nil, err
	}
	return rep, nil
}

// addPauses marks rep's paused kinds, adding those with no row in it
// (paused before any effect of theirs), kinds sorted by name.
func (s Store) addPauses(ctx context.Context, rep *Stats) error {
	paused, err := s.pauses(ctx)
	if err != nil {
		return err
	}
	byKind := map[string]int{}
	for i, k := range rep.Kinds {
		byKind[k.Kind] = i
	}
	for kind, p := range paused {
		i, ok := byKind[kind]
		if !ok {
			rep.Kinds = append(rep.Kinds, KindStats{Kind: kind})
			i = len(rep.Kinds) - 1
		}
		rep.Kinds[i].Paused = p
	}
	sort.Slice(rep.Kinds, func(i, j int) bool { return rep.Kinds[i].Kind < rep.Kinds[j].Kind })
	return nil
}

// KindPause is kind's pause in force (effects pause), nil when it is not
// paused: why a pending effect of it does not run.
func (s Store) KindPause(ctx context.Context, kind string) (*PauseStats, error) {
	paused, err := s.pauses(ctx)
	return paused[kind], err
}

// pauses are the kinds paused now, by PostgreSQL (the dispatchers follow
// it).
func (s Store) pauses(ctx context.Context) (map[string]*PauseStats, error) {
	kinds, err := control.New(s.DB, nil, s.Table, control.Options{}).Kinds(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]*PauseStats{}
	for _, k := range kinds {
		if k.Paused && k.PausedAt != nil {
			out[k.Kind] = &PauseStats{Since: *k.PausedAt, By: k.PausedBy}
		}
	}
	return out, nil
}

// countOpenSQL is CountOpen's statement. The statuses are written into
// it, so that each branch can use its status's partial index.
func countOpenSQL(table schema.Table) string {
	return `SELECT kind, 'pending', count(*), extract(epoch FROM now() - min(GREATEST(created_at, run_at)) FILTER (WHERE isfinite(GREATEST(created_at, run_at))))::float8
	      FROM ` + table.Quoted() + ` WHERE status = 'pending' GROUP BY kind
	     UNION ALL
	    SELECT kind, 'failed', count(*), NULL
	      FROM ` + table.Quoted() + ` WHERE status = 'failed' GROUP BY kind
	     UNION ALL
	    SELECT kind, 'cancelled', count(*), NULL
	      FROM ` + table.Quoted() + ` WHERE status = 'cancelled' GROUP BY kind`
}

// collectCounts reads rows of (kind, status, count, age of the oldest
// pending row in seconds or NULL) into rep, kinds sorted by name.
func collectCounts(rows pgx.Rows, rep *Stats) error {
	byKind := map[string]*KindStats{}
	oldest := -1.0
	var kind, status string
	var n int64
	// The age in seconds: a row created centuries ago has an age past
	// time.Duration's 292 years. 'infinity' and '-infinity' have none (and
	// now() minus '-infinity' is "interval out of range").
	var age *float64
	_, err := pgx.ForEachRow(rows, []any{&kind, &status, &n, &age}, func() error {
		k := byKind[kind]
		if k == nil {
			k = &KindStats{Kind: kind}
			byKind[kind] = k
		}
		k.add(status, n)
		rep.Total.add(status, n)
		if age != nil {
			// Counted from when the row was due: a scheduled effect still
			// waiting for its run_at has no age yet.
			*age = max(*age, 0)
			k.OldestPendingAge = AgeText(*age)
			if *age > oldest {
				oldest = *age
				rep.OldestPendingAge = k.OldestPendingAge
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range byKind {
		rep.Kinds = append(rep.Kinds, *k)
	}
	sort.Slice(rep.Kinds, func(i, j int) bool { return rep.Kinds[i].Kind < rep.Kinds[j].Kind })
	return nil
}

// ConsumerFigures reads the dispatcher consumer of each kind of rep, listing
// the stream's consumers once; with addKinds, the kinds that have a
// dispatcher consumer and no row in rep are added to it (with their
// consumer only). It gives up after 30 seconds.
func ConsumerFigures(ctx context.Context, js jetstream.JetStream, rep *Stats, addKinds bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", effects.EffectsStream, err)
	}
	byName := map[string]*jetstream.ConsumerInfo{}
	list := stream.ListConsumers(ctx)
	for info := range list.Info() {
		byName[info.Name] = info
	}
	if err := list.Err(); err != nil {
		return fmt.Errorf("consumers of %s: %w", effects.EffectsStream, err)
	}
	rep.NATS = true
	if addKinds {
		have := map[string]bool{}
		for _, k := range rep.Kinds {
			have[k.Kind] = true
		}
		for name := range byName {
			kind, ok := strings.CutPrefix(name, dispatcher.ConsumerName(""))
			if ok && !have[kind] && effects.ValidateKind(kind) == nil {
				rep.Kinds = append(rep.Kinds, KindStats{Kind: kind})
			}
		}
		sort.Slice(rep.Kinds, func(i, j int) bool { return rep.Kinds[i].Kind < rep.Kinds[j].Kind })
	}
	for i := range rep.Kinds {
		k := &rep.Kinds[i]
		if effects.ValidateKind(k.Kind) != nil {
			continue // rejected at ingest; never in the stream
		}
		c := &ConsumerStats{Name: dispatcher.ConsumerName(k.Kind)}
		k.Consumer = c
		if info := byName[c.Name]; info != nil {
			c.Found = true
			c.NumPending, c.AckPending, c.Redelivered = info.NumPending, info.NumAckPending, info.NumRedelivered
		}
	}
	return nil
}

// AgeText writes an age of sec seconds as a rounded time.Duration does, in
// hours past what a Duration holds.
func AgeText(sec float64) string {
	if sec < float64(math.MaxInt64/int64(time.Second)) {
		return time.Duration(math.Round(sec) * float64(time.Second)).String()
	}
	return fmt.Sprintf("%.0fh", math.Floor(sec/3600))
}
