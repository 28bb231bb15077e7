package console

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

func publishCompletion(t *testing.T, js jetstream.JetStream, kind string, status effects.Status) {
	t.Helper()
	c := effects.Completion{EffectID: "00000000-0000-4000-8000-000000000001", Kind: kind, Status: status, Attempts: 1, CompletedAt: time.Now()}
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), effects.CompletedSubject(kind), data); err != nil {
		t.Fatal(err)
	}
}

// The chart's counts come from the completions stream: those published
// before the first look (the last hour, read back) and those after it
// (followed), by kind and status; a message that is not a completion is
// left out.
func TestActivityCountsCompletions(t *testing.T) {
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		publishCompletion(t, js, "send_email", effects.StatusSucceeded)
	}
	publishCompletion(t, js, "send_email", effects.StatusFailed)
	if _, err := js.Publish(context.Background(), effects.CompletedSubject("webhook"), []byte(`not a completion`)); err != nil {
		t.Fatal(err)
	}
	a := newActivity(js, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(a.close)

	counts := func() (mailOK, mailFailed, hookOK, total int, loading bool) {
		s := a.snapshot()
		mailOK, mailFailed = s.sumOf("send_email")
		hookOK, _ = s.sumOf("webhook")
		for _, m := range s.Total {
			total += m.Succeeded + m.Failed
		}
		return mailOK, mailFailed, hookOK, total, s.Loading
	}
	testenv.WaitFor(t, 10*time.Second, "the hour read back", func() bool {
		ok, failed, _, total, loading := counts()
		return ok == 3 && failed == 1 && total == 4 && !loading
	})
	publishCompletion(t, js, "webhook", effects.StatusSucceeded)
	publishCompletion(t, js, "webhook", effects.StatusSucceeded)
	testenv.WaitFor(t, 10*time.Second, "new completions followed", func() bool {
		ok, failed, hook, total, _ := counts()
		return ok == 3 && failed == 1 && hook == 2 && total == 6
	})
	s := a.snapshot()
	if last := s.Total[chartMinutes-1]; last.Succeeded+last.Failed == 0 && s.Total[chartMinutes-2].Succeeded == 0 {
		t.Errorf("the completions are not in the last minutes: %+v", s.Total)
	}
	if got := s.kinds(); strings.Join(got, ",") != "send_email,webhook" {
		t.Errorf("kinds %v", got)
	}
}

// Unwatched, the reader stops (nothing is read for nobody), and the next
// look reads the hour again.
func TestActivityStopsWhenUnwatched(t *testing.T) {
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	publishCompletion(t, js, "send_email", effects.StatusSucceeded)
	a := newActivity(js, slog.New(slog.NewTextHandler(io.Discard, nil)))
	a.idleAfter = 200 * time.Millisecond
	t.Cleanup(a.close)
	running := func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.running
	}
	testenv.WaitFor(t, 10*time.Second, "counted", func() bool {
		ok, _ := a.snapshot().sumOf("send_email")
		return ok == 1
	})
	testenv.WaitFor(t, 10*time.Second, "stopped for want of viewers", func() bool { return !running() })
	publishCompletion(t, js, "send_email", effects.StatusSucceeded)
	testenv.WaitFor(t, 10*time.Second, "read again", func() bool {
		ok, _ := a.snapshot().sumOf("send_email")
		return ok == 2
	})
}

// Without the completions stream the chart says why, and the pages still
// work; once it exists the chart fills.
func TestActivityWithoutTheStream(t *testing.T) {
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	a := newActivity(js, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(a.close)
	testenv.WaitFor(t, 10*time.Second, "the error shown", func() bool {
		err := a.snapshot().Err
		return err != nil && strings.Contains(err.Error(), effects.CompletedStream)
	})
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	publishCompletion(t, js, "send_email", effects.StatusFailed)
	testenv.WaitFor(t, 20*time.Second, "read once the stream exists", func() bool {
		s := a.snapshot()
		_, failed := s.sumOf("send_email")
		return failed == 1 && s.Err == nil
	})
}

func TestChartLayout(t *testing.T) {
	var counts [chartMinutes]minuteCount
	counts[0] = minuteCount{Succeeded: 10}
	counts[chartMinutes-1] = minuteCount{Succeeded: 30, Failed: 10}
	end := time.Date(2026, 3, 14, 9, 26, 0, 0, time.UTC)
	c := newChart(&counts, end, 960, 220, false, "x")
	if len(c.Bars) != 2 {
		t.Fatalf("%d bars, want one per minute with completions (2)", len(c.Bars))
	}
	first, last := c.Bars[0], c.Bars[1]
	// The scale's top is 50 (the peak 40, rounded up to 1-2-5).
	if got, want := last.SucceededH/first.SucceededH, 3.0; got < want-0.01 || got > want+0.01 {
		t.Errorf("bars 30 and 10 have heights in the ratio %.2f, want 3", got)
	}
	if diff := last.SucceededH + last.FailedH - c.PlotH*40/50; diff > 0.01 || diff < -0.01 {
		t.Errorf("the 40 bar is %.1f high, want %.1f", last.SucceededH+last.FailedH, c.PlotH*40/50)
	}
	if last.FailedY+last.FailedH != last.SucceededY {
		t.Errorf("failed is not stacked on succeeded: %+v", last)
	}
	if first.X >= last.X || last.X+last.W > c.PlotX+c.PlotW+0.01 {
		t.Errorf("bars out of order or out of the plot: %+v %+v", first, last)
	}
	if !strings.Contains(last.Title, "09:26 UTC: 30 succeeded, 10 failed") || !strings.Contains(first.Title, "08:27 UTC") {
		t.Errorf("titles %q, %q", first.Title, last.Title)
	}
	if c.YTicks[2].Label != "50" || c.XTicks[0].Label != "−60m" || c.XTicks[4].Label != "now" {
		t.Errorf("ticks %+v %+v", c.YTicks, c.XTicks)
	}
	for n, want := range map[int]int{0: 2, 1: 2, 3: 5, 10: 10, 11: 20, 40: 50, 51: 100, 999: 1000} {
		if got := niceCeil(n); got != want {
			t.Errorf("niceCeil(%d) = %d, want %d", n, got, want)
		}
	}
}
