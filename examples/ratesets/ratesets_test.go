package ratesets_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/effects-run/effects/examples/ratesets"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

func call(t *testing.T, h effects.HandlerFunc, payload string) (string, error) {
	t.Helper()
	result, err := h(context.Background(), effects.Effect{ID: "e1", Kind: "publish_rateset", Payload: json.RawMessage(payload)})
	raw, merr := effects.MarshalResult(result)
	if merr != nil {
		t.Fatal(merr)
	}
	return string(raw), err
}

func TestPublishRateset(t *testing.T) {
	store := ratesets.NewStore(4512)
	h := ratesets.PublishRateset(store)
	if got, err := call(t, h, `{"RATESET": 4512}`); err != nil || got != `{"rateset":4512,"status":"published"}` {
		t.Errorf("got %s, %v", got, err)
	}
	if rs, _ := store.RateSet(context.Background(), 4512); rs.Status != "published" || store.Uploads(4512) != 1 {
		t.Errorf("rateset %+v, uploads %d", rs, store.Uploads(4512))
	}
	for _, payload := range []string{`{"RATESET": 7}`, `{}`, `[]`} {
		if _, err := call(t, h, payload); !effects.IsPermanent(err) {
			t.Errorf("%s: err %v, want a permanent error", payload, err)
		}
	}
}

// The async handler completes through the real completion client: the
// completion lands on effects.completed.publish_rateset_async.
func TestStartRatesetCompletesThroughJetStream(t *testing.T) {
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	store := ratesets.NewStore(4512)
	e := effects.Effect{ID: "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11", Kind: "publish_rateset_async", EventID: "ev1",
		Payload: json.RawMessage(`{"RATESET": 4512}`)}
	done := effects.NewClient(js).For(e.Ref())
	if err := ratesets.StartRateset(store)(ctx, e, done); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, effects.CompletedStream)
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := s.GetLastMsgForSubject(ctx, effects.CompletedSubject(e.Kind))
		if err == nil {
			c, err := effects.ParseCompletion(m.Data)
			if err != nil || c.EffectID != e.ID || c.Status != effects.StatusSucceeded || string(c.Completion) != `{"rateset":4512,"status":"published"}` {
				t.Fatalf("completion %s (%v)", m.Data, err)
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatal("no completion in 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ExamplePublishRateset() {
	store := ratesets.NewStore(4512)
	reg := effects.NewRegistry()
	reg.Handle("publish_rateset", ratesets.PublishRateset(store))

	h, _ := reg.Lookup("publish_rateset")
	result, _, err := h.Call(context.Background(), effects.Effect{Kind: "publish_rateset", Payload: json.RawMessage(`{"RATESET": 4512}`)}, nil)
	raw, _ := effects.MarshalResult(result)
	fmt.Println(string(raw), err)
	// Output: {"rateset":4512,"status":"published"} <nil>
}
