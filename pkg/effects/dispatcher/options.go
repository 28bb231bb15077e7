package dispatcher

import (
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultConsumerPrefix names the dispatcher's own consumers:
// dispatcher-<kind>.
const DefaultConsumerPrefix = "dispatcher-"

// DeliverFrom is where a consumer created by the dispatcher starts reading
// the effects stream.
type DeliverFrom int

const (
	// DeliverAll starts at the oldest effect the stream still holds (the
	// start of retention). The default.
	DeliverAll DeliverFrom = iota
	// DeliverNew starts with the effects published after the consumer is
	// created.
	DeliverNew
)

// ConsumerOption changes how a [Dispatcher] consumes; the defaults are those of the
// effects dispatcher itself. Another team runs its own durable consumers on
// the effects stream with a dispatcher of its own:
//
//	dispatcher.New(cfg, reg, js, logger, registerer,
//		dispatcher.WithConsumerPrefix("audit-"),
//		dispatcher.WithDeliverFrom(dispatcher.DeliverNew),
//		dispatcher.WithoutCompletions())
type ConsumerOption func(*options) error

type options struct {
	prefix        string
	deliver       DeliverFrom
	noCompletions bool
	controls      bool
}

func defaultOptions() options { return options{prefix: DefaultConsumerPrefix} }

// WithConsumerPrefix names the durable consumers prefix+<kind> instead of
// dispatcher-<kind>. A consumer of its own gets every effect of its kinds,
// whatever the dispatcher's consumers take, and acks only its own copy.
// The prefix must not start with "dispatcher" (those consumers are the
// dispatcher's: acking there would take effects from it) and, with the
// kind, must make a valid consumer name.
func WithConsumerPrefix(prefix string) ConsumerOption {
	return func(o *options) error {
		switch {
		case prefix == "":
			return fmt.Errorf("consumer prefix: empty; want a name of your own such as %q", "audit-")
		case strings.HasPrefix(prefix, "dispatcher"):
			return fmt.Errorf("consumer prefix %q: names starting with \"dispatcher\" are the effects dispatcher's consumers; use a name of your own", prefix)
		case strings.ContainsAny(prefix, " \t\r\n.*>/\\"):
			return fmt.Errorf("consumer prefix %q: want no whitespace, '.', '*', '>', '/' or '\\'", prefix)
		}
		o.prefix = prefix
		return nil
	}
}

// WithDeliverFrom sets where a consumer starts when the dispatcher creates
// it. It applies only at creation: a durable consumer that exists keeps its
// position (and JetStream refuses to change its deliver policy).
func WithDeliverFrom(d DeliverFrom) ConsumerOption {
	return func(o *options) error {
		if d != DeliverAll && d != DeliverNew {
			return fmt.Errorf("deliver from %d: want DeliverAll or DeliverNew", d)
		}
		o.deliver = d
		return nil
	}
}

// WithoutCompletions makes the dispatcher an observer: a handler's result
// decides ack, retry (nak with the same backoff) or give-up (term) exactly
// as for the dispatcher, but no completion is published, so the effect's
// row is left to the kind's owner. Asynchronous handlers, which exist to
// publish a completion later, are refused.
func WithoutCompletions() ConsumerOption {
	return func(o *options) error {
		o.noCompletions = true
		return nil
	}
}

// WithControls makes the dispatcher obey the operator controls (`effects
// pause`, `effects resume`, `effects cancel`): it watches the bucket
// EFFECTS_CONTROL, which the completer creates and fills from PostgreSQL,
// starts no attempt of a paused kind or a cancelled effect, cancels the
// context of a running attempt whose effect is cancelled, and starts no
// attempt at all while it cannot read the controls (/readyz says why).
// [Main] sets it; the effects dispatcher must have it, or pauses and
// cancels do not reach its kinds. An observer ([WithoutCompletions]) need
// not: it runs nothing on the effects' behalf.
func WithControls() ConsumerOption {
	return func(o *options) error {
		o.controls = true
		return nil
	}
}

func (d DeliverFrom) policy() jetstream.DeliverPolicy {
	if d == DeliverNew {
		return jetstream.DeliverNewPolicy
	}
	return jetstream.DeliverAllPolicy
}
