package schemas_test

import (
	"context"
	"encoding/json"
	"log"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/schemas"
)

// Another team's consumer of send_email effects: its own durable consumer
// (never the dispatcher's dispatcher-<kind>), from the start of retention,
// with explicit acks; each message is checked against the v1 schema. This is
// the Go snippet of the README's "Other teams' consumers", compiled.
func Example_consumer() {
	ctx := context.Background()
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	v, err := schemas.NewValidator()
	if err != nil {
		log.Fatal(err)
	}

	cons, err := js.CreateOrUpdateConsumer(ctx, effects.EffectsStream, jetstream.ConsumerConfig{
		Durable:        "billing-audit",
		FilterSubjects: []string{effects.Subject("send_email")},
		AckPolicy:      jetstream.AckExplicitPolicy,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		log.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var e effects.Effect
		if err := v.Effect(m.Data()); err != nil {
			log.Printf("not a v1 effect: %v", err)
			_ = m.Term() // redelivering will not help
			return
		}
		if err := json.Unmarshal(m.Data(), &e); err != nil {
			_ = m.Term()
			return
		}
		log.Printf("effect %s (%s) event %s", e.ID, e.Kind, m.Headers().Get(jetstream.MsgIDHeader))
		_ = m.Ack()
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cc.Stop()
	<-ctx.Done() // until the program stops
}
