package completer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/pkg/effects"
)

// state is a row as the rules see it; applied names the completion that
// wrote it (-1: none).
type state struct {
	status  effects.Status
	at      time.Time
	applied int
}

// apply is the rule set, one completion at a time: the model the batch
// statement plus reduce must match.
func apply(s state, c effects.Completion, idx int) state {
	next := state{status: c.Status, at: c.CompletedAt, applied: idx}
	switch {
	case s.status == effects.StatusSucceeded:
		return s
	case s.status == effects.StatusPending:
		return next
	case c.Status == effects.StatusSucceeded:
		return next
	case !c.CompletedAt.Before(s.at):
		return next
	}
	return s
}

func TestReduceMatchesSequentialWrites(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ids := [][16]byte{{1}, {2}, {3}}
	statuses := []effects.Status{effects.StatusSucceeded, effects.StatusFailed}
	initials := []effects.Status{effects.StatusPending, effects.StatusFailed, effects.StatusSucceeded}
	var winners []int
	byID := map[[16]byte]int{}
	loserOf := map[int]int{}
	for round := 0; round < 5000; round++ {
		n := 1 + rng.IntN(8)
		items := make([]item, n)
		for i := range items {
			items[i] = item{id: ids[rng.IntN(len(ids))], comp: effects.Completion{
				Status: statuses[rng.IntN(2)],
				// Few distinct times, so that ties happen.
				CompletedAt: base.Add(time.Duration(rng.IntN(3)) * time.Second),
			}}
		}
		initial := map[[16]byte]state{}
		for _, id := range ids {
			initial[id] = state{status: initials[rng.IntN(3)], at: base.Add(time.Duration(rng.IntN(3)) * time.Second), applied: -1}
		}

		sequential := map[[16]byte]state{}
		for id, s := range initial {
			sequential[id] = s
		}
		for i, it := range items {
			sequential[it.id] = apply(sequential[it.id], it.comp, i)
		}

		winners = reduce(items, winners, byID, loserOf)
		batched := map[[16]byte]state{}
		for id, s := range initial {
			batched[id] = s
		}
		seen := map[[16]byte]bool{}
		for _, w := range winners {
			if seen[items[w].id] {
				t.Fatalf("round %d: two winners for one id", round)
			}
			seen[items[w].id] = true
			batched[items[w].id] = apply(batched[items[w].id], items[w].comp, w)
		}
		for i := range items {
			w, isLoser := loserOf[i]
			if !isLoser && !contains(winners, i) {
				t.Fatalf("round %d: item %d is neither winner nor loser", round, i)
			}
			if isLoser && (!contains(winners, w) || items[w].id != items[i].id) {
				t.Fatalf("round %d: loser %d points at %d, not its id's winner", round, i, w)
			}
		}
		if len(winners)+len(loserOf) != n {
			t.Fatalf("round %d: %d winners + %d losers != %d items", round, len(winners), len(loserOf), n)
		}
		for id := range initial {
			if sequential[id] != batched[id] {
				t.Fatalf("round %d id %v: sequential %+v, batched %+v\nitems %+v", round, id[0], sequential[id], batched[id], items)
			}
		}
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestParseUUID(t *testing.T) {
	t.Parallel()
	a := parseUUID("0190a1b2-C3D4-7e5f-8a9b-0c1d2e3f4a5b")
	b := parseUUID("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")
	if a != b {
		t.Fatal("case changes the id")
	}
	if got := fmt.Sprintf("%x", a); got != "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b" {
		t.Fatalf("parseUUID = %s", got)
	}
}

func TestParseItem(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		data       string
		completion string // "" for SQL NULL
		err        string
	}{
		{`{"effect_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","status":"succeeded","completion":{"a":1},"completed_at":"2025-01-01T00:00:00Z"}`, `{"a":1}`, ""},
		{`{"effect_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","status":"failed","completion":null,"error":"x","completed_at":"2025-01-01T00:00:00Z"}`, "", ""},
		{`{"effect_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","status":"failed","completed_at":"2025-01-01T00:00:00Z"}`, "", ""},
		{`{"effect_id":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b","status":"failed","attempts":3000000000,"completed_at":"2025-01-01T00:00:00Z"}`, "", "attempts"},
		{`[]`, "", "malformed completion"},
	} {
		it, err := parseItem([]byte(tc.data))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, effects.ErrMalformedCompletion) {
				t.Errorf("%s: err %v, want %q", tc.data, err, tc.err)
			}
			continue
		}
		if err != nil || string(it.completion) != tc.completion {
			t.Errorf("%s: completion %q, err %v", tc.data, it.completion, err)
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Parallel()
	const url = "postgres://app:s3cret-pw@db:5432/app"
	c, err := ConfigFromEnv(envconfig.FromMap(map[string]string{"DATABASE_URL": url}))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{DatabaseURL: url, Table: "effects", BatchSize: 500, Writers: 2, Linger: DefaultLinger, AckWait: 30 * time.Second,
		RetryMax: 10 * time.Second, WriteTimeout: 10 * time.Second, ShutdownTimeout: 30 * time.Second,
		Streams: effects.StreamOptions{}.WithDefaults()}
	if c != want {
		t.Fatalf("defaults:\n got %+v\nwant %+v", c, want)
	}

	c, err = ConfigFromEnv(envconfig.FromMap(map[string]string{
		"DATABASE_URL": url, "EFFECTS_TABLE": "ops.effects", "EFFECTS_COMPLETER_BATCH_SIZE": "1000",
		"EFFECTS_COMPLETER_LINGER": "2ms", "EFFECTS_COMPLETER_ACK_WAIT": "1m", "EFFECTS_COMPLETER_RETRY_MAX": "5s",
		"EFFECTS_COMPLETER_WRITE_TIMEOUT": "3s", "EFFECTS_SHUTDOWN_TIMEOUT": "20s", "EFFECTS_COMPLETER_WRITERS": "4",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Table != "ops.effects" || c.BatchSize != 1000 || c.Linger != 2*time.Millisecond || c.AckWait != time.Minute ||
		c.RetryMax != 5*time.Second || c.Writers != 4 || c.WriteTimeout != 3*time.Second || c.ShutdownTimeout != 20*time.Second {
		t.Fatalf("from env: %+v", c)
	}

	// 0 turns lingering off; the Go zero value is the default.
	c, err = ConfigFromEnv(envconfig.FromMap(map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_LINGER": "0"}))
	if err != nil || c.Linger != NoLinger || c.WithDefaults().Linger != NoLinger {
		t.Fatalf("EFFECTS_COMPLETER_LINGER=0: %v %+v", err, c)
	}
	if d := (Config{}).WithDefaults(); d.Linger != DefaultLinger || d.LingerFrom != DefaultLingerFrom {
		t.Fatalf("Go defaults: linger %s from %d", d.Linger, d.LingerFrom)
	}

	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "DATABASE_URL is not set"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_TABLE": "a b"}, "EFFECTS_TABLE"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_BATCH_SIZE": "0x"}, "EFFECTS_COMPLETER_BATCH_SIZE"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_BATCH_SIZE": "100000"}, "EFFECTS_COMPLETER_BATCH_SIZE"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_WRITERS": "0"}, "EFFECTS_COMPLETER_WRITERS"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_WRITERS": "100"}, "EFFECTS_COMPLETER_WRITERS"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_BATCH_SIZE": "0"}, "EFFECTS_COMPLETER_BATCH_SIZE"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_ACK_WAIT": "0s"}, "EFFECTS_COMPLETER_ACK_WAIT"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_LINGER": "-1s"}, "EFFECTS_COMPLETER_LINGER"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_LINGER": "20s"}, "EFFECTS_COMPLETER_LINGER"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_ACK_WAIT": "10ms"}, "EFFECTS_COMPLETER_ACK_WAIT"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_RETRY_MAX": "soon"}, "EFFECTS_COMPLETER_RETRY_MAX"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_COMPLETER_WRITE_TIMEOUT": "-1s"}, "EFFECTS_COMPLETER_WRITE_TIMEOUT"},
		{map[string]string{"DATABASE_URL": url, "EFFECTS_SHUTDOWN_TIMEOUT": "-1s"}, "EFFECTS_SHUTDOWN_TIMEOUT"},
	} {
		_, err := ConfigFromEnv(envconfig.FromMap(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want one naming %s", tc.env, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestLogValueHidesDatabaseURL(t *testing.T) {
	t.Parallel()
	v := Config{DatabaseURL: "postgres://u:s3cret@h/db"}.WithDefaults().LogValue()
	if s := v.String(); strings.Contains(s, "s3cret") || !strings.Contains(s, "batch_size") {
		t.Fatalf("LogValue: %s", s)
	}
}

func TestSampler(t *testing.T) {
	t.Parallel()
	var s sampler
	if n, ok := s.allow(3); !ok || n != 3 {
		t.Fatalf("first: %d %v", n, ok)
	}
	if _, ok := s.allow(2); ok {
		t.Fatal("second within the interval let through")
	}
	s.last = time.Now().Add(-sampleEvery)
	if n, ok := s.allow(1); !ok || n != 3 {
		t.Fatalf("after the interval: %d %v, want the 3 held back", n, ok)
	}
}

// lingerWorker is a worker of a completer that only collects.
func lingerWorker(cfg Config) *worker {
	return &worker{c: &Completer{cfg: cfg.WithDefaults()}}
}

func fill(ch chan jetstream.Msg, n int) {
	for range n {
		ch <- nil
	}
}

// TestCollectDoesNotLingerAtLowLoad: a completion that arrives alone, with
// no batch taken lately, is written at once, however long the linger.
func TestCollectDoesNotLingerAtLowLoad(t *testing.T) {
	t.Parallel()
	wk := lingerWorker(Config{BatchSize: 100, Linger: 10 * time.Second, AckWait: time.Minute})
	inbox := make(chan jetstream.Msg, 100)
	start := time.Now()
	if got := len(wk.collect(t.Context(), nil, inbox)); got != 1 {
		t.Fatalf("batch of %d", got)
	}
	// A few queued, under LingerFrom (8): still at once.
	fill(inbox, 5)
	if got := len(wk.collect(t.Context(), nil, inbox)); got != 6 {
		t.Fatalf("batch of %d", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("waited %s for a batch at low load", d)
	}
}

// TestCollectLingersWhenBehind: when at least LingerFrom completions were
// queued, the writer waits for more, and stops waiting once the batch is
// full; the next batch lingers too, even if it starts with one completion.
func TestCollectLingersWhenBehind(t *testing.T) {
	t.Parallel()
	wk := lingerWorker(Config{BatchSize: 100, Linger: 10 * time.Second, AckWait: time.Minute})
	inbox := make(chan jetstream.Msg, 100)
	fill(inbox, 19) // 20 with the first: LingerFrom is 8
	go func() {
		time.Sleep(50 * time.Millisecond)
		fill(inbox, 80)
	}()
	start := time.Now()
	if got := len(wk.collect(t.Context(), nil, inbox)); got != 100 {
		t.Fatalf("batch of %d, want it filled to 100 while lingering", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a full batch waited %s: lingering should end once full", d)
	}

	// The last batch was large, so a writer that finds one completion
	// lingers for the ones coming.
	go func() {
		time.Sleep(50 * time.Millisecond)
		fill(inbox, 3)
	}()
	wk2 := &worker{c: wk.c}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if got := len(wk2.collect(ctx, nil, inbox)); got != 4 {
		t.Fatalf("batch of %d after a full one, want 4: it did not linger", got)
	}
}

// TestCollectStopsLingeringAfterTheLoad: a batch smaller than LingerFrom
// ends the lingering, and so does a second without batches.
func TestCollectStopsLingeringAfterTheLoad(t *testing.T) {
	t.Parallel()
	wk := lingerWorker(Config{BatchSize: 100, Linger: 10 * time.Second, AckWait: time.Minute})
	inbox := make(chan jetstream.Msg, 100)

	wk.c.lastBehind.Store(time.Now().UnixNano())
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if got := len(wk.collect(ctx, nil, inbox)); got != 1 { // lingers until ctx ends: behind
		t.Fatalf("batch of %d", got)
	}
	start := time.Now()
	wk.collect(t.Context(), nil, inbox) // the last batch was small: at once
	wk.c.lastBehind.Store(time.Now().Add(-2 * behindFor).UnixNano())
	wk.collect(t.Context(), nil, inbox) // the last large batch is old: at once
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("waited %s after the load ended", d)
	}
}

// TestCollectNoLinger: NoLinger never waits, even when behind.
func TestCollectNoLinger(t *testing.T) {
	t.Parallel()
	wk := lingerWorker(Config{BatchSize: 100, Linger: NoLinger, AckWait: time.Minute})
	inbox := make(chan jetstream.Msg, 100)
	fill(inbox, 50)
	start := time.Now()
	if got := len(wk.collect(t.Context(), nil, inbox)); got != 51 {
		t.Fatalf("batch of %d", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("waited %s with NoLinger", d)
	}
}

// TestEndToEndObservedThroughTheCache: ages go to the kind's histogram; a
// kind past the label bound and an invalid kind to ~other and ~invalid, and
// only kinds labelled as themselves are cached.
func TestEndToEndObservedThroughTheCache(t *testing.T) {
	t.Parallel()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	wk := &worker{c: &Completer{m: m, kinds: kindlabel.New(1)}, endToEnd: map[string]prometheus.Observer{}}
	for _, k := range []string{"echo", "echo", "mail", "mail", "bad kind!"} {
		wk.observeEndToEnd(k, 1)
	}
	count := func(label string) uint64 {
		var pb dto.Metric
		if err := m.endToEnd.WithLabelValues(label).(prometheus.Metric).Write(&pb); err != nil {
			t.Fatal(err)
		}
		return pb.GetHistogram().GetSampleCount()
	}
	if got := count("echo"); got != 2 {
		t.Errorf("echo: %d", got)
	}
	if got := count(kindlabel.Other); got != 2 {
		t.Errorf("~other: %d", got)
	}
	if got := count(kindlabel.Invalid); got != 1 {
		t.Errorf("~invalid: %d", got)
	}
	if len(wk.endToEnd) != 1 {
		t.Errorf("cached %d kinds, want echo only", len(wk.endToEnd))
	}
}
