package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// report is one run of the comparison.
type report struct {
	When    time.Time
	Machine machine
	Config  config
	Results []result
}

func (rep report) river() float64 {
	for _, r := range rep.Results {
		if r.Name == "River" {
			return r.Rate
		}
	}
	return 0
}

func (rep report) ratio(r result) string {
	if rv := rep.river(); rv > 0 && r.Rate > 0 {
		return fmt.Sprintf("%.2f×", r.Rate/rv)
	}
	return "–"
}

func peakRSS(r result) int64 {
	var sum int64
	for _, p := range r.Procs {
		if !p.Load {
			sum += p.PeakRSS
		}
	}
	return sum
}

func mib(b int64) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
}

func cpuText(us float64) string {
	if us < 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", us)
}

// thousands formats a rate as 12,345.
func thousands(f float64) string {
	s := fmt.Sprintf("%.0f", f)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func half(r result, v float64) string {
	if r.HalfN == 0 {
		return "–"
	}
	return ms(v)
}

func halfRate(r result) string {
	if r.HalfN == 0 {
		return "–"
	}
	return thousands(r.HalfRate)
}

// text is the table printed at the end of a run.
func (rep report) text() string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "contender\trate\t\t× River\tp50\tp95\tp99\thalf rate\tp50\tp95\tp99\tCPU µs/effect\tpeak RSS\t")
	for _, r := range rep.Results {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Name, thousands(r.Rate), r.Unit, rep.ratio(r),
			ms(r.P50), ms(r.P95), ms(r.P99), halfRate(r), half(r, r.HalfP50), half(r, r.HalfP95), half(r, r.HalfP99),
			cpuText(r.PipelineCPU()), mib(peakRSS(r)))
	}
	w.Flush()
	b.WriteString("\nper process (CPU µs per effect at the maximum rate, peak RSS):\n")
	for _, r := range rep.Results {
		var parts []string
		for _, p := range r.Procs {
			parts = append(parts, fmt.Sprintf("%s %s µs %s", p.Name, cpuText(p.CPU), mib(p.PeakRSS)))
		}
		fmt.Fprintf(&b, "  %s: %s\n", r.Name, strings.Join(parts, ", "))
	}
	return b.String()
}

// markdown is docs/bench/latest.md.
func (rep report) markdown() string {
	var b strings.Builder
	m := rep.Machine
	fmt.Fprintf(&b, "# Benchmark: effects and River side by side\n\n")
	fmt.Fprintf(&b, "Run %s by `%s`, %s in all. ", rep.When.Format("2006-01-02 15:04 UTC"), rep.Config.command, m.Took.Round(time.Second))
	fmt.Fprintf(&b, "%d CPUs (%s), %s, PostgreSQL %s, nats-server %s. ", m.NumCPU, m.CPUModel, m.GoVersion, m.PGVersion, m.NATSVersion)
	fmt.Fprintf(&b, "Load average (1, 5, 15 min) before: %s; after: %s.\n\n", m.LoadStart, m.LoadEnd)
	fmt.Fprintf(&b, "![effects/s and CPU per effect](latest.png)\n\n")
	b.WriteString(rep.table())
	fmt.Fprintf(&b, "\n%d effects (River: jobs) per contender at the maximum rate, inserted in COPY batches of %d while being worked; "+
		"rate = effects / (last completion written − first insert). Latency: insert (or, for the ingest alone, the POST) to completion written "+
		"(`completed_at − created_at`; River: `finalized_at − created_at`), at the maximum rate and in a second phase of %s at half of it. "+
		"CPU µs/effect: every process of the contender but the load generator, PostgreSQL's backends of its database included "+
		"(River's one process also inserts its jobs); peak RSS: their VmHWM summed, PostgreSQL's not included.\n\n",
		rep.Config.effects, rep.Config.batch, rep.Config.halfFor)
	b.WriteString("Per process, at the maximum rate:\n\n| contender | process | CPU µs/effect | peak RSS |\n|---|---|--:|--:|\n")
	for _, r := range rep.Results {
		for _, p := range r.Procs {
			name := p.Name
			if p.Load {
				name += " (load generator)"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Name, name, cpuText(p.CPU), mib(p.PeakRSS))
		}
	}
	var any bool
	for _, r := range rep.Results {
		any = any || len(r.Statements) > 0
	}
	if any {
		b.WriteString("\nPostgreSQL's statements at the maximum rate (`pg_stat_statements`, when the server preloads it): execution time, which includes waiting for locks and I/O, not CPU alone; per effect over the phase's effects:\n\n")
		b.WriteString("| contender | statement | calls | ms | µs/effect | rows |\n|---|---|--:|--:|--:|--:|\n")
		for _, r := range rep.Results {
			for _, st := range r.Statements {
				q := strings.ReplaceAll(st.Query, "|", "\\|")
				fmt.Fprintf(&b, "| %s | `%s` | %d | %.0f | %.1f | %d |\n", r.Name, q, st.Calls, st.TotalMS, st.TotalMS*1000/float64(max(1, r.N)), st.Rows)
			}
		}
	}
	return b.String()
}

// table is the summary table in markdown.
func (rep report) table() string {
	var b strings.Builder
	b.WriteString("| contender | rate | × River | p50 | p95 | p99 | at half rate | p50 | p95 | p99 | CPU µs/effect | peak RSS |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rep.Results {
		fmt.Fprintf(&b, "| %s | %s %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Name, thousands(r.Rate), r.Unit, rep.ratio(r),
			ms(r.P50), ms(r.P95), ms(r.P99), halfRate(r), half(r, r.HalfP50), half(r, r.HalfP95), half(r, r.HalfP99),
			cpuText(r.PipelineCPU()), mib(peakRSS(r)))
	}
	return b.String()
}

// summary is what the README and docs/performance.md show between their
// bench:latest markers: when and where, and the table. link is the path
// of latest.md from the page.
func (rep report) summary(link string) string {
	m := rep.Machine
	return fmt.Sprintf("Run %s (`%s`): %d CPUs (%s), %s, PostgreSQL %s, nats-server %s; load average before %s, after %s. "+
		"Per process and the chart: [%s](%s).\n\n%s",
		rep.When.Format("2006-01-02 15:04 UTC"), rep.Config.command, m.NumCPU, m.CPUModel, m.GoVersion, m.PGVersion, m.NATSVersion,
		m.LoadStart, m.LoadEnd, link, link, rep.table())
}

// replaceMarked replaces what stands between the lines <!-- bench:latest -->
// and <!-- /bench:latest --> in the file at path with text. It reports
// whether the file has the markers; a file that does not exist has none.
func replaceMarked(path, text string) (bool, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	const open, closing = "<!-- bench:latest -->\n", "<!-- /bench:latest -->"
	s := string(b)
	i := strings.Index(s, open)
	j := strings.Index(s, closing)
	if i < 0 || j < i {
		return false, nil
	}
	s = s[:i+len(open)] + strings.TrimSuffix(text, "\n") + "\n" + s[j:]
	return true, os.WriteFile(path, []byte(s), 0o644)
}

// chartKinds are the processes stacked in the CPU chart, bottom up.
var chartKinds = []string{"river", "ingest", "dispatcher", "completer", "nats-server", "postgres"}

// chart writes latest.png: the rates on the left, CPU per effect by process
// on the right.
func (rep report) chart(path string) error {
	names := make([]string, len(rep.Results))
	rates := make(plotter.Values, len(rep.Results))
	for i, r := range rep.Results {
		names[i] = r.Name
		rates[i] = r.Rate
	}
	left := plot.New()
	left.Title.Text = "throughput (ingest alone: POST/s)"
	left.Y.Label.Text = "effects/s"
	bars, err := plotter.NewBarChart(rates, vg.Points(28))
	if err != nil {
		return err
	}
	bars.Color = plotutil.Color(0)
	bars.LineStyle.Width = 0
	left.Add(bars)
	left.NominalX(names...)
	left.Y.Min = 0
	left.Y.Max *= 1.1
	xys := make(plotter.XYs, len(rates))
	texts := make([]string, len(rates))
	for i, v := range rates {
		xys[i] = plotter.XY{X: float64(i), Y: v}
		texts[i] = thousands(v)
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].XAlign = draw.XCenter
		labels.TextStyle[i].YAlign = draw.YBottom
	}
	left.Add(labels)

	right := plot.New()
	right.Title.Text = "CPU per effect (load generator not counted)"
	right.Y.Label.Text = "µs"
	right.Legend.Top = true
	right.Legend.Left = false
	var below *plotter.BarChart
	for k, kind := range chartKinds {
		vals := make(plotter.Values, len(rep.Results))
		any := false
		for i, r := range rep.Results {
			for _, p := range r.Procs {
				if p.Name == kind && p.CPU > 0 {
					vals[i] = p.CPU
					any = true
				}
			}
		}
		if !any {
			continue
		}
		bc, err := plotter.NewBarChart(vals, vg.Points(28))
		if err != nil {
			return err
		}
		bc.Color = plotutil.Color(k + 1)
		bc.LineStyle.Width = 0
		if below != nil {
			bc.StackOn(below)
		}
		below = bc
		right.Add(bc)
		right.Legend.Add(kind, bc)
	}
	right.NominalX(names...)
	right.Y.Min = 0
	right.Y.Max *= 1.3 // room for the legend

	img := vgimg.New(12*vg.Inch, 4.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 4, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	canvases := plot.Align([][]*plot.Plot{{left, right}}, tiles, dc)
	left.Draw(canvases[0][0])
	right.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
