package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// soakSampleEvery is how often a soak reads each process's resident memory.
const soakSampleEvery = 10 * time.Second

// soakPlan is a soak phase: rate effects/s for length, sampling memory.
type soakPlan struct {
	rate    float64
	length  time.Duration
	start   time.Time
	samples []soakSample
}

type soakSample struct {
	At  time.Duration
	RSS map[string]int64
}

func (s *soakPlan) sample(procs []*proc) {
	if s.start.IsZero() {
		s.start = time.Now()
	}
	smp := soakSample{At: time.Since(s.start), RSS: map[string]int64{}}
	for _, p := range procs {
		if _, rss, err := memOf(p.pid()); err == nil {
			smp.RSS[p.name] = rss
		}
	}
	s.samples = append(s.samples, smp)
}

// runSoak runs one contender at a steady rate (half its maximum unless
// -soak-rate) for -soak-duration and reports whether each process's memory
// stayed flat: the mean RSS of the last minute against that of the minute
// before the half-way mark.
func runSoak(ctx context.Context, c config) (err error) {
	if c.soakWhat != "river" && c.soakWhat != "table" && c.soakWhat != "webhook" {
		return fmt.Errorf("-soak-contender %q: want table, webhook or river", c.soakWhat)
	}
	if c.soakFor < 3*time.Minute {
		return fmt.Errorf("-soak-duration %s: at least 3m (the minute before the half-way mark and the last one are compared)", c.soakFor)
	}
	env, err := newBenchEnv(ctx, c)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, env.close(err == nil)) }()
	run := func(plan *soakPlan) (result, error) {
		if c.soakWhat == "river" {
			return env.runRiverContender(ctx, plan)
		}
		return env.runEffectsContender(ctx, c.soakWhat, plan)
	}
	rate := c.soakRate
	if rate <= 0 {
		env.c.halfFor = 0
		r, err := run(nil)
		if err != nil {
			return fmt.Errorf("measuring the maximum rate: %w", err)
		}
		rate = r.Rate / 2
		fmt.Printf("effects-bench: %s: maximum %.0f/s; soaking at %.0f/s for %s\n", c.soakWhat, r.Rate, rate, c.soakFor)
	}
	plan := &soakPlan{rate: rate, length: c.soakFor}
	start := time.Now()
	r, err := run(plan)
	if err != nil {
		return err
	}
	env.machine.LoadEnd = loadAverage()
	env.machine.Took = time.Since(start)
	md := soakMarkdown(c, env.machine, r, plan)
	fmt.Print("\n" + md)
	if c.out != "" {
		if err := os.MkdirAll(c.out, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(c.out, "soak.md"), []byte(md), 0o644); err != nil {
			return err
		}
		if err := soakChart(plan, filepath.Join(c.out, "soak.png")); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(c.out, "soak.csv"), []byte(soakCSV(plan)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// soakNames are the processes sampled, in the order of the first sample.
func soakNames(plan *soakPlan) []string {
	var names []string
	for _, s := range plan.samples {
		for n := range s.RSS {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names
}

// meanRSS is the mean RSS of name over the samples in [from, to).
func meanRSS(plan *soakPlan, name string, from, to time.Duration) float64 {
	var sum, n float64
	for _, s := range plan.samples {
		if s.At >= from && s.At < to {
			if v, ok := s.RSS[name]; ok {
				sum += float64(v)
				n++
			}
		}
	}
	if n == 0 {
		return 0
	}
	return sum / n
}

func soakMarkdown(c config, m machine, r result, plan *soakPlan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Soak: %s at %.0f effects/s for %s\n\n", r.Name, plan.rate, plan.length)
	fmt.Fprintf(&b, "Run %s by `%s`. %d CPUs (%s), %s, PostgreSQL %s, nats-server %s. Load average before: %s; after: %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), c.command, m.NumCPU, m.CPUModel, m.GoVersion, m.PGVersion, m.NATSVersion, m.LoadStart, m.LoadEnd)
	fmt.Fprintf(&b, "%d effects, achieved %.0f/s; latency p50 %s, p95 %s, p99 %s.\n\n", r.N, r.Rate, ms(r.P50), ms(r.P95), ms(r.P99))
	fmt.Fprintf(&b, "![RSS over time](soak.png)\n\n")
	last := plan.samples[len(plan.samples)-1].At
	mid := last / 2
	fmt.Fprintf(&b, "Resident memory (VmRSS, sampled every 10 s): the mean of the minute before the half-way mark (%s) against the mean of the last minute. "+
		"A cache that fills and levels off by the half-way mark passes; memory that keeps growing does not.\n\n", mid.Round(time.Second))
	b.WriteString("| process | 2nd minute | minute before half-way | last minute | change (half-way → last) | flat (within 10%) |\n|---|--:|--:|--:|--:|---|\n")
	for _, name := range soakNames(plan) {
		early := meanRSS(plan, name, time.Minute, 2*time.Minute)
		a := meanRSS(plan, name, mid-time.Minute, mid)
		z := meanRSS(plan, name, last-time.Minute, last+time.Second)
		change, flat := 0.0, "yes"
		if a > 0 {
			change = (z - a) / a * 100
		}
		if change > 10 {
			flat = "**no**"
		}
		fmt.Fprintf(&b, "| %s | %.0f MiB | %.0f MiB | %.0f MiB | %+.0f%% | %s |\n", name, early/(1<<20), a/(1<<20), z/(1<<20), change, flat)
	}
	b.WriteString("\nThe samples: [soak.csv](soak.csv) (seconds, process, bytes).\n")
	return b.String()
}

// soakCSV is every sample: seconds since the start, process, VmRSS bytes.
func soakCSV(plan *soakPlan) string {
	var b strings.Builder
	b.WriteString("seconds,process,rss_bytes\n")
	for _, s := range plan.samples {
		for _, name := range soakNames(plan) {
			if v, ok := s.RSS[name]; ok {
				fmt.Fprintf(&b, "%.0f,%s,%d\n", s.At.Seconds(), name, v)
			}
		}
	}
	return b.String()
}

func soakChart(plan *soakPlan, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("RSS during the soak (%.0f/s)", plan.rate)
	p.X.Label.Text = "minutes"
	p.Y.Label.Text = "MiB"
	p.Y.Min = 0
	for i, name := range soakNames(plan) {
		var pts plotter.XYs
		for _, s := range plan.samples {
			if v, ok := s.RSS[name]; ok {
				pts = append(pts, plotter.XY{X: s.At.Minutes(), Y: float64(v) / (1 << 20)})
			}
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(name, l)
	}
	p.Legend.Top = true
	p.Y.Max *= 1.25 // room for the legend
	return p.Save(10*vg.Inch, 4*vg.Inch, path)
}
