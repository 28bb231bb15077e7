package effects_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

// rateSets stands in for the application's store.
var rateSets = map[int64]string{4512: "draft"}

var errNotFound = errors.New("rateset not found")

// The seed's synchronous publish_rateset: validate, do the work, return the
// completion. A missing rateset can never succeed, so it fails at once; any
// other error would be retried.
func publishRateset(ctx context.Context, e effects.Effect) (any, error) {
	var p struct{ RATESET int64 }
	if err := json.Unmarshal(e.Payload, &p); err != nil || p.RATESET == 0 {
		return nil, effects.Permanent(fmt.Errorf("payload needs RATESET: %s", e.Payload))
	}
	if _, ok := rateSets[p.RATESET]; !ok {
		return nil, effects.Permanent(fmt.Errorf("rateset %d: %w", p.RATESET, errNotFound))
	}
	rateSets[p.RATESET] = "published"
	return map[string]any{"rateset": p.RATESET, "status": "published"}, nil
}

func ExampleRegistry_Handle() {
	reg := effects.NewRegistry()
	reg.Handle("publish_rateset", publishRateset)

	// What the dispatcher does with a delivered effect:
	h, _ := reg.Lookup("publish_rateset")
	for _, payload := range []string{`{"RATESET": 4512}`, `{"RATESET": 7}`} {
		result, _, err := h.Call(context.Background(), effects.Effect{Kind: "publish_rateset", Payload: json.RawMessage(payload)}, nil)
		raw, _ := effects.MarshalResult(result)
		fmt.Printf("completion=%s permanent=%v err=%v\n", raw, effects.IsPermanent(err), err)
	}
	// Output:
	// completion={"rateset":4512,"status":"published"} permanent=false err=<nil>
	// completion=null permanent=true err=rateset 7: rateset not found
}

// recordingDone stands in for the completion client in this example.
type recordingDone struct{ ref effects.Ref }

func (d recordingDone) Complete(_ context.Context, result any) error {
	raw, err := effects.MarshalResult(result)
	fmt.Printf("complete %s: %s\n", d.ref.ID, raw)
	return err
}
func (d recordingDone) Fail(_ context.Context, err error) error {
	fmt.Printf("fail %s: %v\n", d.ref.ID, err)
	return nil
}
func (d recordingDone) Ref() effects.Ref { return d.ref }

// The seed's asynchronous publish_rateset: validate, start the upload and
// return; the upload completes the effect later (the Celery chained
// callback).
func ExampleRegistry_HandleAsync() {
	uploads := make(chan func())
	reg := effects.NewRegistry()
	reg.HandleAsync("publish_rateset", func(ctx context.Context, e effects.Effect, done effects.Done) error {
		var p struct{ RATESET int64 }
		if err := json.Unmarshal(e.Payload, &p); err != nil {
			return effects.Permanent(err)
		}
		if _, ok := rateSets[p.RATESET]; !ok {
			return effects.Permanent(errNotFound)
		}
		// In real code: enqueue a job that carries done.Ref() to a worker,
		// which calls effects.NewClient(js).Complete(ctx, ref, result).
		go func() {
			uploads <- func() { _ = done.Complete(context.Background(), map[string]int64{"uploaded": p.RATESET}) }
		}()
		return nil
	})

	h, _ := reg.Lookup("publish_rateset")
	e := effects.Effect{ID: "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11", Kind: "publish_rateset", Payload: json.RawMessage(`{"RATESET": 4512}`)}
	_, deferred, err := h.Call(context.Background(), e, recordingDone{ref: e.Ref()})
	fmt.Println("deferred:", deferred, "err:", err)
	(<-uploads)() // the worker finishes
	// Output:
	// deferred: true err: <nil>
	// complete 0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11: {"uploaded":4512}
}

// Per-kind limits at registration. EFFECTS_KIND_CONCURRENCY and
// EFFECTS_KIND_RATE override them without a rebuild.
func ExampleRegistry_Handle_options() {
	reg := effects.NewRegistry()
	reg.Handle("publish_rateset", publishRateset,
		effects.Concurrency(5),             // at once, per dispatcher process
		effects.RateLimit(10, time.Second), // across all dispatcher processes
		effects.AttemptTimeout(20*time.Second),
		effects.MaxAttempts(5),
		effects.MaxRetryDelay(time.Minute)) // caps backoff and RetryAfter
	h, _ := reg.Lookup("publish_rateset")
	o := h.Options()
	fmt.Println(o.Concurrency, o.Rate, o.AttemptTimeout, o.MaxAttempts, o.MaxRetryDelay)
	// Output:
	// 5 10/s 20s 5 1m0s
}
