package testenv

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// MetricValue sums, over the series of name in g whose labels include the
// given name/value pairs, their counter value, gauge value and histogram
// sample count.
func MetricValue(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// hasLabels reports whether m carries every name/value pair of labels.
func hasLabels(m *dto.Metric, labels []string) bool {
pairs:
	for i := 0; i+1 < len(labels); i += 2 {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] {
				if lp.GetValue() != labels[i+1] {
					return false
				}
				continue pairs
			}
		}
		return false
	}
	return true
}

// WaitFor polls cond every 20ms until it holds, failing the test when it
// does not within the given time.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
