package effects_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

func TestEnsureStreams(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.Retention != jetstream.LimitsPolicy || cfg.Storage != jetstream.FileStorage || cfg.MaxAge != 168*time.Hour || cfg.Duplicates != 2*time.Minute {
		t.Fatalf("%+v", cfg)
	}
	// An operator's own setting survives.
	cfg.MaxMsgs = 12345
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// A service started with other stream settings changes nothing.
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{MaxAge: 24 * time.Hour, Duplicates: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, effects.EffectsStream)
	got := s.CachedInfo().Config
	if got.MaxMsgs != 12345 || got.MaxAge != 168*time.Hour || got.Duplicates != 2*time.Minute {
		t.Fatalf("EnsureStreams changed an existing stream: %+v", got)
	}
	// The explicit step brings ours to the new values, keeping the operator's.
	if err := effects.ApplyStreams(ctx, js, effects.StreamOptions{MaxAge: 24 * time.Hour, Duplicates: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	s, _ = js.Stream(ctx, effects.EffectsStream)
	got = s.CachedInfo().Config
	if got.MaxMsgs != 12345 || got.MaxAge != 24*time.Hour || got.Duplicates != 5*time.Minute {
		t.Fatalf("ApplyStreams: %+v", got)
	}
	// Both streams exist side by side: their subjects do not overlap.
	if _, err := js.Stream(ctx, effects.CompletedStream); err != nil {
		t.Fatal(err)
	}
	// A completion lands in the completion stream, not the effects one.
	c := effects.NewClient(js)
	if err := c.Complete(ctx, effects.Ref{ID: "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11", Kind: "echo"}, "ok"); err != nil {
		t.Fatal(err)
	}
	cs, _ := js.Stream(ctx, effects.CompletedStream)
	info, _ := cs.Info(ctx)
	es, _ := js.Stream(ctx, effects.EffectsStream)
	einfo, _ := es.Info(ctx)
	if info.State.Msgs != 1 || einfo.State.Msgs != 0 {
		t.Fatalf("completed %d effects %d", info.State.Msgs, einfo.State.Msgs)
	}
	// A completion that is not valid is refused before it is published.
	if err := c.Complete(ctx, effects.Ref{ID: "not-a-uuid", Kind: "echo"}, "ok"); err == nil {
		t.Fatal("invalid completion published")
	}
}
