package console

import (
	"context"
	"sort"
	"time"

	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/pkg/effects"
)

// kindsData is what /kinds shows, computed once per half refresh for all
// viewers (see cached).
type kindsData struct {
	Kinds []kindRow
	Total operator.StatusCount
	// OldestPending is the oldest pending row's age ("" if none).
	OldestPending string
	// Chart is every kind's completions over the last hour; Loading says
	// the hour is still being read; ActivityErr why it cannot be.
	Chart                     *chart
	Loading                   bool
	ActivityErr               string
	HourSucceeded, HourFailed int
	ConsumersErr              string
	Updated                   time.Time
}

// paused reports whether kind is paused.
func (kd *kindsData) paused(kind string) bool {
	for _, k := range kd.Kinds {
		if k.Kind == kind {
			return k.Paused
		}
	}
	return false
}

type kindRow struct {
	operator.KindStats
	HourSucceeded, HourFailed int
	Spark                     *chart
	// Valid: a kind a dispatcher can run (and so pause).
	Valid bool
	// Paused, with the pause in force (PostgreSQL's word: the dispatchers
	// apply it within seconds).
	Paused   bool
	PausedAt *time.Time
	PausedBy *string
}

// loadKinds counts the open rows per kind (pending and failed, through
// their partial indexes: not the succeeded rows, which would be a count of
// the whole table on every refresh; `effects stats` counts those), reads
// each kind's dispatcher consumer, and the last hour's completions.
// A kind is listed when it has open rows, completions in the hour, a
// dispatcher consumer, or is paused.
func (h *Handler) loadKinds(ctx context.Context) (*kindsData, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := h.store.CountOpen(ctx)
	if err != nil {
		return nil, err
	}
	snap := h.activity.snapshot()
	seen := map[string]bool{}
	for _, k := range st.Kinds {
		seen[k.Kind] = true
	}
	for _, k := range snap.kinds() {
		if !seen[k] && effects.ValidateKind(k) == nil {
			st.Kinds = append(st.Kinds, operator.KindStats{Kind: k})
			seen[k] = true
		}
	}
	kd := &kindsData{Total: st.Total, OldestPending: st.OldestPendingAge, Loading: snap.Loading, Updated: time.Now().UTC()}
	if snap.Err != nil {
		kd.ActivityErr = snap.Err.Error()
	}
	if err := operator.ConsumerFigures(ctx, h.js, st, true); err != nil {
		kd.ConsumersErr = err.Error()
	}
	sort.Slice(st.Kinds, func(i, j int) bool { return st.Kinds[i].Kind < st.Kinds[j].Kind })
	for _, k := range st.Kinds {
		row := kindRow{KindStats: k, Valid: effects.ValidateKind(k.Kind) == nil}
		if p := k.Paused; p != nil {
			row.Paused, row.PausedAt, row.PausedBy = true, &p.Since, p.By
		}
		row.HourSucceeded, row.HourFailed = snap.sumOf(k.Kind)
		if b := snap.Kinds[k.Kind]; b != nil {
			row.Spark = newChart(b, snap.End, 120, 24, true, "completions of "+k.Kind+" per minute, last hour")
		}
		kd.HourSucceeded += row.HourSucceeded
		kd.HourFailed += row.HourFailed
		kd.Kinds = append(kd.Kinds, row)
	}
	kd.Chart = newChart(&snap.Total, snap.End, 960, 220, false, "completions per minute over the last hour, all kinds")
	return kd, nil
}
