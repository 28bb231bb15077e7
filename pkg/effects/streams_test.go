package effects_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/consume"
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

// On nats-server 2.14+ a new effects stream allows fast batches (the table
// source publishes its batches so); an existing one is left as it is by the
// services, reported as drift, and allowed by ApplyStreams.
func TestStreamsAllowBatchPublish(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]bool{"2.10.22": false, "2.13.9": false, "2.14.0-RC.1": false, "2.14.0": true, "v2.15.3": true, "": false, "junk": false} {
		if got := effects.ServerHasBatchPublish(v); got != want {
			t.Errorf("ServerHasBatchPublish(%q) = %v, want %v", v, got, want)
		}
	}
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	allowed := func(name string) bool {
		t.Helper()
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.AllowBatchPublish
	}
	if !allowed(effects.EffectsStream) || allowed(effects.CompletedStream) {
		t.Fatalf("new streams: effects allow batches %v, completed %v; want true, false", allowed(effects.EffectsStream), allowed(effects.CompletedStream))
	}

	// A stream made before (or by hand) without it.
	if err := js.DeleteStream(ctx, effects.EffectsStream); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, effects.StreamConfigs(effects.StreamOptions{})[0]); err != nil {
		t.Fatal(err)
	}
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if allowed(effects.EffectsStream) {
		t.Fatal("EnsureStreams changed an existing stream")
	}
	drift, err := effects.StreamDrift(ctx, js, effects.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(drift) != 1 || !strings.Contains(drift[0], "allow_batched") {
		t.Errorf("drift %q, want the effects stream's fast batch publishing", drift)
	}
	if err := effects.ApplyStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if !allowed(effects.EffectsStream) {
		t.Fatal("ApplyStreams did not allow fast batches")
	}
	if drift, _ := effects.StreamDrift(ctx, js, effects.StreamOptions{}); len(drift) != 0 {
		t.Errorf("drift after ApplyStreams: %q", drift)
	}
}

// The consumers' position bucket is created with the streams, with file
// storage, so that on a new deployment it exists before the first message;
// on streams that exist without it, it is left to the readers, which then
// say that a missing consumer cannot be told from a new one.
func TestPositionBucketIsCreatedWithTheStreams(t *testing.T) {
	t.Parallel()
	srv := testenv.StartNATS(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, consume.PositionBucket)
	if err != nil {
		t.Fatalf("no position bucket with new streams: %v", err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.BackingStore() != "JetStream" || st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage != jetstream.FileStorage {
		t.Errorf("bucket storage %v, want file", st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Storage)
	}
	if err := js.DeleteKeyValue(ctx, consume.PositionBucket); err != nil {
		t.Fatal(err)
	}
	for _, apply := range []func(context.Context, jetstream.JetStream, effects.StreamOptions) error{effects.EnsureStreams, effects.ApplyStreams} {
		if err := apply(ctx, js, effects.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := js.KeyValue(ctx, consume.PositionBucket); err == nil {
			t.Fatal("the position bucket was created on streams that existed")
		}
	}
}
