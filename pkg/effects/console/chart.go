package console

import (
	"fmt"
	"strconv"
	"time"
)

// chart is a bar chart of completions per minute, succeeded stacked under
// failed, laid out here and drawn as SVG by the templates: a few rectangles
// need no charting library, and the page stays one server-rendered
// document that the live refresh replaces as a whole.
type chart struct {
	Width, Height float64
	// Plot is the drawing area inside the axes' labels.
	PlotX, PlotY, PlotW, PlotH float64
	Bars                       []chartBar
	YTicks                     []chartTick
	XTicks                     []chartTick
	// Label describes the chart for screen readers.
	Label string
	Small bool // a sparkline: no axes
}

type chartBar struct {
	X, W                   float64
	SucceededY, SucceededH float64
	FailedY, FailedH       float64
	Title                  string // the tooltip: the minute and its counts
}

type chartTick struct {
	X, Y   float64
	Label  string
	Anchor string // SVG text-anchor
}

// newChart lays out counts (a bucket a minute, the last ending at end) in
// a width × height box; small leaves out the axes.
func newChart(counts *[chartMinutes]minuteCount, end time.Time, width, height float64, small bool, label string) *chart {
	c := &chart{Width: width, Height: height, Small: small, Label: label}
	if small {
		c.PlotX, c.PlotY, c.PlotW, c.PlotH = 0, 1, width, height-1
	} else {
		c.PlotX, c.PlotY, c.PlotW, c.PlotH = 44, 8, width-52, height-32
	}
	peak := 0
	for _, m := range counts {
		peak = max(peak, m.Succeeded+m.Failed)
	}
	top := niceCeil(peak)
	scale := c.PlotH / float64(top)
	step := c.PlotW / chartMinutes
	gap := min(1, step/4)
	start := end.Add(-(chartMinutes - 1) * time.Minute)
	for i, m := range counts {
		if m.Succeeded+m.Failed == 0 {
			continue
		}
		x := c.PlotX + float64(i)*step
		sh, fh := float64(m.Succeeded)*scale, float64(m.Failed)*scale
		base := c.PlotY + c.PlotH
		at := start.Add(time.Duration(i) * time.Minute).UTC().Format("15:04")
		c.Bars = append(c.Bars, chartBar{
			X: x + gap/2, W: step - gap,
			SucceededY: base - sh, SucceededH: sh,
			FailedY: base - sh - fh, FailedH: fh,
			Title: fmt.Sprintf("%s UTC: %d succeeded, %d failed", at, m.Succeeded, m.Failed),
		})
	}
	if small {
		return c
	}
	for _, v := range []int{0, top / 2, top} {
		c.YTicks = append(c.YTicks, chartTick{X: c.PlotX - 6, Y: c.PlotY + c.PlotH - float64(v)*scale, Label: strconv.Itoa(v), Anchor: "end"})
	}
	for _, ago := range []int{60, 45, 30, 15, 0} {
		x := c.PlotX + float64(chartMinutes-ago)*step
		label, anchor := "now", "end"
		switch {
		case ago == chartMinutes:
			label, anchor = fmt.Sprintf("−%dm", ago), "start"
		case ago > 0:
			label, anchor = fmt.Sprintf("−%dm", ago), "middle"
		}
		c.XTicks = append(c.XTicks, chartTick{X: x, Y: c.PlotY + c.PlotH + 16, Label: label, Anchor: anchor})
	}
	return c
}

// niceCeil is the smallest of 1, 2, 5 × a power of ten at or above n (and
// at least 2, so that the middle tick is a whole number).
func niceCeil(n int) int {
	if n <= 2 {
		return 2
	}
	for p := 1; ; p *= 10 {
		for _, f := range []int{1, 2, 5} {
			if f*p >= n && f*p >= 2 {
				return f * p
			}
		}
	}
}
