package ingest

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/effects-run/effects/internal/kindlabel"
)

// TestIngestCountsThroughTheCache: the cached counters are the labelled
// ones, per kind and outcome; invalid kinds and kinds past the label bound
// are counted under ~invalid and ~other and never cached.
func TestIngestCountsThroughTheCache(t *testing.T) {
	t.Parallel()
	m, err := newMetrics(prometheus.NewRegistry(), kindlabel.New(2), true)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		m.ingest("echo", outcomePublished)
	}
	m.ingest("echo", outcomeDuplicate)
	m.ingest("mail", outcomePublished)
	m.ingest("mail", outcomeIgnored)
	for i := range 5 {
		m.ingest(fmt.Sprintf("other%d", i), outcomePublished) // past the bound of 2
		m.ingest(fmt.Sprintf("bad kind %d!", i), outcomeRejected)
	}
	// Only what happened has a series: 4 for echo and mail, ~other, ~invalid.
	if n := testutil.CollectAndCount(m.ingested); n != 6 {
		t.Errorf("%d series, want 6", n)
	}
	for _, tc := range []struct {
		kind, outcome string
		want          float64
	}{
		{"echo", outcomePublished, 3}, {"echo", outcomeDuplicate, 1}, {"mail", outcomePublished, 1},
		{"mail", outcomeIgnored, 1}, {"mail", outcomeDuplicate, 0},
		{kindlabel.Other, outcomePublished, 5}, {kindlabel.Invalid, outcomeRejected, 5},
	} {
		if got := testutil.ToFloat64(m.ingested.WithLabelValues(tc.kind, tc.outcome)); got != tc.want {
			t.Errorf("%s %s: %v, want %v", tc.kind, tc.outcome, got, tc.want)
		}
	}
	if by := m.byKind.Load(); by == nil || len(*by) != 2 {
		t.Errorf("cache: %v, want echo and mail only", by)
	}
}

func BenchmarkIngestMetric(b *testing.B) {
	m, err := newMetrics(prometheus.NewRegistry(), kindlabel.New(kindlabel.DefaultMax), true)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.ingest("echo", outcomePublished)
	}
}
