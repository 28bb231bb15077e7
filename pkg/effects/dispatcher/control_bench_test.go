package dispatcher

import (
	"context"
	"log/slog"
	"math"
	"strconv"
	"testing"
	"time"
)

// BenchmarkControlCheck is what the operator controls add to an attempt on
// the hot path: the check before a worker pulls (awaitRunnable), the check
// and registration before the attempt starts (admit: the
// attempt's context, one lock, the cancelled and paused look-ups, one map
// insert) and the unregistration after it (endAttempt), with none or some
// effects of the kind cancelled.
func BenchmarkControlCheck(b *testing.B) {
	for _, cancelled := range []int{0, 1000} {
		b.Run("cancelled="+strconv.Itoa(cancelled), func(b *testing.B) {
			d := &Dispatcher{logger: slog.New(slog.DiscardHandler), workCtx: context.Background()}
			x := &executor{d: d, kind: "echo", logger: d.logger, ctl: &kindControl{cancelled: map[string]time.Time{}, running: map[string]*runEntry{}}}
			d.ctl = &controls{d: d, start: time.Now(), kinds: map[string]*executor{"echo": x}}
			d.ctl.live.Store(true)
			d.ctl.proven.Store(math.MaxInt64 / 2) // trusted throughout
			for i := range cancelled {
				x.ctl.cancelled["00000000-0000-4000-8000-"+strconv.Itoa(100000000000+i)] = time.Now()
			}
			ctx := context.Background()
			b.ReportAllocs()
			dl := &delivery{}
			dl.effect.ID = "6f1c2a3b-0000-4000-8000-000000000001"
			for b.Loop() {
				x.awaitRunnable(ctx)
				dl.run = runEntry{}
				if _, ok := x.admit(ctx, dl); !ok {
					b.Fatal("not admitted")
				}
				x.endAttempt(dl)
			}
		})
	}
}
