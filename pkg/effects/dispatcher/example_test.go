package dispatcher_test

import (
	"context"
	"fmt"
	"time"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// A custom dispatcher binary: the built-in handlers plus one's own. Main
// reads its settings from the environment (see the README) and runs until
// SIGTERM.
func ExampleMain() {
	reg := effects.NewRegistry()
	reg.Handle("publish_rateset", func(ctx context.Context, e effects.Effect) (any, error) {
		return map[string]string{"status": "published"}, nil
	})
	dispatcher.Main(reg, dispatcher.WithBuiltins())
}

// Middleware are plain func(Handler) Handler; Chain stacks them, the first
// outermost. The dispatcher runs every attempt through Recover, its metrics
// and Timeout.
func ExampleChain() {
	logged := func(next dispatcher.Handler) dispatcher.Handler {
		return func(ctx context.Context, a *dispatcher.Attempt) dispatcher.Result {
			r := next(ctx, a)
			fmt.Printf("%s attempt %d: err=%v\n", a.Effect.Kind, a.Effect.Attempt, r.Err)
			return r
		}
	}
	h := dispatcher.Chain(func(context.Context, *dispatcher.Attempt) dispatcher.Result {
		panic("boom")
	}, logged, dispatcher.Recover, dispatcher.Timeout(time.Second))
	h(context.Background(), &dispatcher.Attempt{Effect: effects.Effect{Kind: "echo", Attempt: 1}})
	// Output:
	// echo attempt 1: err=panic: boom
}
