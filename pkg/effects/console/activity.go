package console

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/pkg/effects"
)

// chartMinutes is the span of the charts: the last hour, a bar a minute.
const chartMinutes = 60

// activity counts completions per kind and minute over the last hour. It
// reads them from the EFFECTS_COMPLETED stream with an ordered consumer
// (ephemeral, nothing left behind, nothing taken from the completer), from
// an hour ago, then follows the stream. It runs only while someone looks:
// the first snapshot starts it, and it stops when nobody asked for one for
// idleAfter, so an unwatched console costs the NATS server nothing.
//
// Why the stream and not the table: the table has no index on
// completed_at, so "completed in the last hour" would read every row the
// table keeps, or (bounded by created_at) miss the re-runs of old failures,
// which is what an operator watches after "retry all failed". The stream
// holds every completion, re-runs included, in the order they happened,
// and a follower reads each one once.
type activity struct {
	js        jetstream.JetStream
	logger    *slog.Logger
	labels    *kindlabel.Set
	idleAfter time.Duration
	now       func() time.Time

	mu sync.Mutex
	// counts[kind][minute] are the completions of kind published in that
	// minute (Unix time / 60).
	counts    map[string]map[int64]*minuteCount
	lastSeq   uint64 // the last stream sequence counted, to resume after it
	caughtUp  bool   // the backfill reached the end of the stream once
	readErr   error  // why reading stopped last, until it works again
	lastAsked time.Time
	running   bool
	stop      context.CancelFunc
	done      chan struct{}
	closed    bool
}

type minuteCount struct{ Succeeded, Failed int }

func newActivity(js jetstream.JetStream, logger *slog.Logger) *activity {
	return &activity{js: js, logger: logger, labels: kindlabel.New(0), idleAfter: 10 * time.Minute, now: time.Now}
}

// activitySnapshot is the last hour's completions, a bucket a minute, the
// last bucket the current minute.
type activitySnapshot struct {
	// End is the start of the current minute.
	End   time.Time
	Kinds map[string]*[chartMinutes]minuteCount
	Total [chartMinutes]minuteCount
	// Loading is true until the hour before the start has been read.
	Loading bool
	Err     error
}

// sumOf returns the kind's succeeded and failed completions in the hour.
func (s *activitySnapshot) sumOf(kind string) (succeeded, failed int) {
	if b := s.Kinds[kind]; b != nil {
		for _, m := range b {
			succeeded += m.Succeeded
			failed += m.Failed
		}
	}
	return succeeded, failed
}

// kinds are the kinds with completions in the hour, sorted.
func (s *activitySnapshot) kinds() []string {
	out := make([]string, 0, len(s.Kinds))
	for k := range s.Kinds {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// snapshot returns the counts, and starts reading if it is not.
func (a *activity) snapshot() *activitySnapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	a.lastAsked = now
	if !a.running && !a.closed {
		a.start()
	}
	cur := now.Unix() / 60
	snap := &activitySnapshot{End: time.Unix(cur*60, 0), Kinds: map[string]*[chartMinutes]minuteCount{},
		Loading: !a.caughtUp, Err: a.readErr}
	for kind, minutes := range a.counts {
		var b [chartMinutes]minuteCount
		seen := false
		for m, c := range minutes {
			i := int(m - (cur - chartMinutes + 1))
			if i < 0 {
				delete(minutes, m) // older than the hour: forget it
				continue
			}
			if i >= chartMinutes {
				continue // a stream clock ahead of ours
			}
			b[i] = *c
			snap.Total[i].Succeeded += c.Succeeded
			snap.Total[i].Failed += c.Failed
			seen = true
		}
		if seen {
			snap.Kinds[kind] = &b
		}
	}
	return snap
}

// start starts the reader; a.mu is held.
func (a *activity) start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.running, a.stop, a.done = true, cancel, make(chan struct{})
	a.counts, a.lastSeq, a.caughtUp, a.readErr = map[string]map[int64]*minuteCount{}, 0, false, nil
	go a.run(ctx, a.done)
}

// close stops the reader and waits for it.
func (a *activity) close() {
	a.mu.Lock()
	a.closed = true
	stop, done := a.stop, a.done
	a.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// run reads until ctx ends or nobody looked for idleAfter, starting again
// (after the last sequence it counted) when reading fails.
func (a *activity) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	idle := time.NewTicker(min(a.idleAfter/4, time.Minute))
	defer idle.Stop()
	readCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			select {
			case <-readCtx.Done():
				return
			case <-idle.C:
				a.mu.Lock()
				unwatched := a.now().Sub(a.lastAsked) >= a.idleAfter
				a.mu.Unlock()
				if unwatched {
					cancel()
					return
				}
			}
		}
	}()
	retry.Until(readCtx, retry.Policy{Min: time.Second, Max: 30 * time.Second}, a.read, func(err error, _ int, wait time.Duration) {
		a.mu.Lock()
		a.readErr = err
		a.mu.Unlock()
		a.logger.Warn("console: reading completions for the charts failed; retrying", "error", err, "wait", wait)
	})
	// Stopped (for want of viewers, or closed): the next viewer's hour is
	// read again rather than shown with a gap.
	a.mu.Lock()
	defer a.mu.Unlock()
	a.running, a.stop = false, nil
	a.counts, a.lastSeq, a.caughtUp, a.readErr = nil, 0, false, nil
}

// read follows the stream until ctx ends (nil) or reading fails.
func (a *activity) read(ctx context.Context) error {
	stream, err := a.js.Stream(ctx, effects.CompletedStream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", effects.CompletedStream, err)
	}
	a.mu.Lock()
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{effects.CompletedSubjects}}
	if a.lastSeq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, a.lastSeq+1
	} else {
		start := time.Unix((a.now().Unix()/60-chartMinutes+1)*60, 0)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	}
	a.mu.Unlock()
	cons, err := stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("read %s: %w", effects.CompletedSubjects, err)
	}
	// The stream may hold nothing from the last hour: then there is no
	// message to say the backfill is done, and the consumer's info does.
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		a.mu.Lock()
		a.caughtUp, a.readErr = true, nil
		a.mu.Unlock()
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(500))
	if err != nil {
		return fmt.Errorf("read %s: %w", effects.CompletedSubjects, err)
	}
	// Stopped when ctx ends (Next returns) and when read returns.
	stop := context.AfterFunc(ctx, it.Stop)
	defer func() {
		stop()
		it.Stop()
	}()
	for {
		m, err := it.Next()
		if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", effects.CompletedSubjects, err)
		}
		a.count(m)
	}
}

// count adds one completion message.
func (a *activity) count(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	c, err := effects.ParseCompletion(m.Data())
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastSeq = md.Sequence.Stream
	if md.NumPending == 0 {
		a.caughtUp = true
	}
	a.readErr = nil
	if err != nil {
		return // not a completion: the completer terms it; nothing to chart
	}
	kind := a.labels.Label(c.Kind)
	minutes := a.counts[kind]
	if minutes == nil {
		minutes = map[int64]*minuteCount{}
		a.counts[kind] = minutes
	}
	minute := md.Timestamp.Unix() / 60
	mc := minutes[minute]
	if mc == nil {
		mc = &minuteCount{}
		minutes[minute] = mc
	}
	if c.Status == effects.StatusFailed {
		mc.Failed++
	} else {
		mc.Succeeded++
	}
}
