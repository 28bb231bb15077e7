package dispatcher_test

import (
	"context"

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
