// Command custom-dispatcher is a dispatcher binary of your own: it registers
// the publish_rateset handlers of examples/ratesets next to the built-in
// ones and runs the dispatcher (configured by the environment like
// cmd/dispatcher; see the README).
//
//	NATS_URL=nats://127.0.0.1:4222 go run ./examples/custom-dispatcher
package main

import (
	"github.com/effects-run/effects/examples/ratesets"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

func main() {
	store := ratesets.NewStore(4512, 4513)
	reg := effects.NewRegistry()
	reg.Handle("publish_rateset", ratesets.PublishRateset(store))          // sync
	reg.HandleAsync("publish_rateset_async", ratesets.StartRateset(store)) // async
	dispatcher.Main(reg, dispatcher.WithBuiltins())
}
