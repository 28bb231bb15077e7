package effects

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/consume"
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
	logger     *slog.Logger
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

// CompletionsLogger is where ConsumeCompletions says what happens to its
// consumer: created, updated, lost and created again (default: nowhere).
func CompletionsLogger(l *slog.Logger) CompletionsOption {
	return func(o *completionsOptions) { o.logger = l }
}

// CompletionsRetry sets the delay after the first error of a completion's
// handler (base, default 1s); it doubles per delivery up to max (default
// 5m), as the dispatcher's backoff does.
func CompletionsRetry(base, max time.Duration) CompletionsOption {
	return func(o *completionsOptions) { o.retryBase, o.retryMax = base, max }
}

// completionsHeartbeat is the pull requests' idle heartbeat: how soon a
// pull request the server lost is noticed.
const completionsHeartbeat = 5 * time.Second

// completionsAckWait is how long a completion's handler may run before
// JetStream gives the completion to another of the consumer's processes.
const completionsAckWait = time.Minute

// ConsumeCompletions reads completions on a durable pull consumer of its
// own, named durable, on the EFFECTS_COMPLETED stream, until ctx ends; then
// it stops fetching, lets the handler call in progress return, and returns
// nil. A consumer that is lost meanwhile (deleted, or with the server's
// store) is created again where it was: after its last ack floor, so that
// only the completion in hand at the loss can be given again. Every completion is given to handle one at a time; nil acks it, an
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
	r, err := consume.Open(ctx, js, consume.Config{
		Stream: CompletedStream, Consumer: cc, Buffer: 1, Heartbeat: completionsHeartbeat, Logger: o.logger,
	})
	if err != nil {
		// No stream, a wrong configuration: say so at once.
		return fmt.Errorf("consume completions: %w", err)
	}
	defer r.Release(nil)
	for {
		m, err := r.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("consume completions: %w", err) // the connection closed
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
