package effects

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// CompletionsOption changes what [ConsumeCompletions] reads and how it
// retries.
type CompletionsOption func(*completionsOptions)

type completionsOptions struct {
	kinds      []string
	deliverNew bool
	retryBase  time.Duration
	retryMax   time.Duration
	ackWait    time.Duration
}

// CompletionKinds reads the completions of these kinds only (default: all).
func CompletionKinds(kinds ...string) CompletionsOption {
	return func(o *completionsOptions) { o.kinds = append(o.kinds, kinds...) }
}

// CompletionsFromNow makes a consumer that does not exist yet start with the
// completions published after it is created, instead of at the start of
// retention. An existing consumer keeps its position.
func CompletionsFromNow() CompletionsOption {
	return func(o *completionsOptions) { o.deliverNew = true }
}

// CompletionsRetry sets the delay after the first error of a completion's
// handler (base, default 1s); it doubles per delivery up to max (default
// 5m), as the dispatcher's backoff does.
func CompletionsRetry(base, max time.Duration) CompletionsOption {
	return func(o *completionsOptions) { o.retryBase, o.retryMax = base, max }
}

// completionsHeartbeat is the pull requests' idle heartbeat: how soon a
// consumer deleted while no request was waiting (its stream deleted) is
// noticed.
const completionsHeartbeat = 5 * time.Second

// completionsAckWait is how long a completion's handler may run before
// JetStream gives the completion to another of the consumer's processes.
const completionsAckWait = time.Minute

// ConsumeCompletions reads completions on a durable pull consumer of its
// own, named durable, on the EFFECTS_COMPLETED stream, until ctx ends (a
// consumer deleted meanwhile is created again, from the start of retention
// or, with CompletionsFromNow, from then); then
// it stops fetching, lets the handler calls in progress return, and returns
// nil. Every completion is given to handle one at a time; nil acks it, an
// error naks it with an exponential delay (it comes back, as often as it
// takes), and a message that is not a valid completion is termed (a
// redelivery would not help) and not given to handle. The handler's context
// ends before the ack wait (1m) runs out.
//
// durable must be your team's name: the completer's consumer
// (effects-completer) and names starting with "dispatcher" are refused.
func ConsumeCompletions(ctx context.Context, js jetstream.JetStream, durable string, handle func(context.Context, Completion) error, opts ...CompletionsOption) error {
	o := completionsOptions{retryBase: time.Second, retryMax: 5 * time.Minute, ackWait: completionsAckWait}
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case durable == "" || strings.ContainsAny(durable, " \t\r\n.*>/\\"):
		return fmt.Errorf("consume completions: durable %q: want a name of your own, without whitespace, '.', '*', '>', '/' or '\\'", durable)
	case durable == "effects-completer" || strings.HasPrefix(durable, "dispatcher"):
		return fmt.Errorf("consume completions: durable %q is a consumer of the effects services; use a name of your own", durable)
	case handle == nil:
		return errors.New("consume completions: nil handler")
	case o.retryBase <= 0 || o.retryMax < o.retryBase:
		return fmt.Errorf("consume completions: retry base %s, max %s: want 0 < base <= max", o.retryBase, o.retryMax)
	}
	cc := jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "completions reader",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.ackWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxDeliver:    -1,
	}
	if o.deliverNew {
		cc.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	if len(o.kinds) == 0 {
		cc.FilterSubject = CompletedPrefix + ">"
	}
	for _, k := range o.kinds {
		if err := ValidateKind(k); err != nil {
			return fmt.Errorf("consume completions: %w", err)
		}
		cc.FilterSubjects = append(cc.FilterSubjects, CompletedSubject(k))
	}
	if len(cc.FilterSubjects) == 1 {
		cc.FilterSubject, cc.FilterSubjects = cc.FilterSubjects[0], nil
	}
	// The consumer is created, and created again whenever it is found gone
	// (deleted by an operator, or with its stream), as the dispatcher does
	// with its own: a reader that stopped for good would go unnoticed.
	var (
		cons jetstream.Consumer
		it   jetstream.MessagesContext
	)
	open := func(first bool) error {
		for wait := 50 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
			var err error
			cons, err = js.CreateOrUpdateConsumer(ctx, CompletedStream, cc)
			if err == nil {
				it, err = cons.Messages(jetstream.PullMaxMessages(1), jetstream.PullHeartbeat(completionsHeartbeat))
			}
			switch {
			case err == nil:
				return nil
			case first:
				// No stream, a wrong configuration: say so at once.
				return fmt.Errorf("consume completions: consumer %s: %w", durable, err)
			case ctx.Err() != nil:
				return ctx.Err()
			}
			// Re-created just after a delete, nats-server 2.15 can refuse
			// with err_code 10012 while it still removes the old files;
			// a stream deleted with it may come back. Try again.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
	}
	if err := open(true); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer func() { stop(); it.Stop() }()
	gone := func() bool {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := cons.Info(ictx)
		return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound)
	}
	for {
		m, err := it.Next()
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrMsgIteratorClosed),
			errors.Is(err, jetstream.ErrNoHeartbeat) && gone():
			it.Stop()
			if err := open(false); err != nil {
				return nil // only ctx ends open(false)
			}
			stop()
			stop = context.AfterFunc(ctx, it.Stop)
			continue
		default:
			continue // a missed heartbeat and the like: the iterator goes on
		}
		c, err := ParseCompletion(m.Data())
		if err != nil {
			_ = m.Term()
			continue
		}
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.ackWait*9/10)
		err = handle(hctx, c)
		cancel()
		if err == nil {
			_ = m.Ack()
			continue
		}
		n := uint64(1)
		if md, mdErr := m.Metadata(); mdErr == nil {
			n = md.NumDelivered
		}
		delay := o.retryBase
		for i := uint64(1); i < n && delay < o.retryMax; i++ {
			delay *= 2
		}
		_ = m.NakWithDelay(min(delay, o.retryMax))
	}
}
