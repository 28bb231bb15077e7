package dispatcher

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/pkg/effects"
)

// verdict is what became of one delivery; it is the outcome label of
// effects_handled_total.
type verdict string

const (
	succeeded   verdict = "succeeded"   // completion published, message acked
	deferred    verdict = "deferred"    // async handler started; message held until its completion
	retried     verdict = "retried"     // nak with a delay: a new attempt later
	failed      verdict = "failed"      // failed completion published, message terminated
	interrupted verdict = "interrupted" // shutdown cut the attempt short: back to the stream at once
	malformed   verdict = "malformed"   // not an effect: terminated (its row failed when it names one)
	cancelled   verdict = "cancelled"   // cancelled by an operator: acked, no completion (the row says so already)
	// noVerdict: no attempt ends here, nothing is counted: a held
	// delivery's end (it was counted as deferred when its hold began), a
	// message given back at a shutdown or a pause before its attempt
	// started.
	noVerdict verdict = ""
)

// action is what JetStream is told about the message.
type action int

const (
	ack   action = iota // Ack
	nak                 // Nak, or NakWithDelay when delay > 0
	term                // Term: never redelivered (plain +TERM, which every server version honours)
	hold                // keep it (InProgress) until the async completion or its deadline
	leave               // tell JetStream nothing: it delivers the message again after the ack wait
)

// result is what one attempt produced.
type result struct {
	value    any
	deferred bool // an async handler started its work
	err      error
	// cancelled: an operator cancelled the effect, before the attempt
	// (it did not run) or while it ran (its result is not recorded).
	cancelled bool
	// malformed is set, instead of the above, for a message that is not an
	// effect.
	malformed error
	// unpublished is set, instead of the above, when the completion of the
	// outcome decided before could not be stored.
	unpublished error
	// givenBack is set, instead of the above, for a delivery handed back at
	// a shutdown without an attempt ending: a message fetched but never
	// started, or an async effect still held.
	givenBack bool
}

// attemptInfo is what the decision needs to know about the delivery and
// the kind, besides the result.
type attemptInfo struct {
	effect      effects.Effect // ID and Kind may be empty for a malformed message
	attempt     int            // from 1
	maxAttempts int
	stopping    bool      // the attempt was cut short by a shutdown
	now         time.Time // when the decision is made
	retryBase   time.Duration
	maxDelay    time.Duration // the kind's max retry delay
	// retryBy is the latest time a retry may be due: well before the stream's
	// MaxAge removes the message. Zero: no such limit.
	retryBy    time.Time
	maxPayload int64 // the connection's max_payload; 0 checks nothing

	// completed: an async handler's completion was published (by its Done,
	// or by anyone for a held delivery).
	completed bool
	// held: the delivery was held for its async completion (and counted as
	// deferred then); heldUntil is its completion deadline.
	held      bool
	heldUntil time.Time
	// gaveUp: the stop's deadline passed; nothing more is said to JetStream.
	gaveUp bool
}

// outcome is the decision for one delivery: the completion to publish
// first (nil for none), then what JetStream is told.
type outcome struct {
	verdict    verdict
	action     action
	delay      time.Duration // for nak
	completion *nats.Msg
	err        error // the handler's error, for logs
}

// maxErrorText bounds the error text a failed completion carries, so a
// failed completion always fits in a message.
const maxErrorText = 8 << 10

// decide maps a delivery's result to its outcome. It is the one place
// that does: [executor.carry] and [executor.settle] only carry the decision
// out, for every path that ends a delivery (its worker, the attempt's watchdog,
// an async completion or deadline, a failed completion publish, a
// shutdown).
func decide(in attemptInfo, r result) outcome {
	switch {
	case in.completed:
		// The async completion is out: whatever the handler returned after
		// it, the effect is done. Counted as deferred once: when its hold
		// began, or now if it never began.
		if in.held {
			return outcome{verdict: noVerdict, action: ack}
		}
		return outcome{verdict: deferred, action: ack}
	case r.givenBack:
		if in.held {
			// Its work may still complete it meanwhile; another
			// dispatcher takes it up at its deadline.
			return outcome{verdict: noVerdict, action: nak, delay: max(in.heldUntil.Sub(in.now), time.Millisecond)}
		}
		return outcome{verdict: noVerdict, action: nak}
	case r.unpublished != nil:
		err := fmt.Errorf("completion not published: %w", r.unpublished)
		if in.gaveUp {
			// The stop's deadline passed: JetStream delivers it again
			// after the ack wait, to whichever dispatcher runs then.
			return outcome{verdict: noVerdict, action: leave, err: err}
		}
		// Delivered again, the handler runs again; a completion stored
		// after all has the same message id and is written once.
		return outcome{verdict: retried, action: nak, delay: in.retryBase, err: err}
	case r.malformed != nil:
		o := outcome{verdict: malformed, action: term, err: r.malformed}
		if effects.IsUUID(in.effect.ID) {
			o.completion = failedMsg(in, "malformed effect message: "+r.malformed.Error())
		}
		return o
	case r.cancelled:
		// The row is cancelled already (the control wrote it); whatever
		// the handler did or returned, nothing more is recorded.
		return outcome{verdict: cancelled, action: ack, err: r.err}
	case in.attempt > in.maxAttempts:
		// Every earlier delivery ended without an outcome: the process
		// crashed or was killed mid-attempt. Stop here rather than let a
		// handler that kills the process run forever.
		err := fmt.Errorf("no outcome after %d deliveries: the dispatcher stopped during every attempt", in.attempt-1)
		return failure(in, err)
	case r.err == nil && r.deferred:
		return outcome{verdict: deferred, action: hold}
	case r.err == nil:
		raw, err := effects.MarshalResult(r.value)
		if err != nil {
			return failure(in, effects.Permanent(err))
		}
		msg, err := effects.CompletionMsg(in.effect.Ref(), effects.Completion{
			EffectID: in.effect.ID, Kind: in.effect.Kind, Status: effects.StatusSucceeded,
			Completion: raw, Attempts: in.attempt, CompletedAt: in.now})
		if err == nil {
			err = effects.CheckSize(msg, in.maxPayload)
		}
		if err != nil {
			// Running the handler again would give the same result: fail now.
			return failure(in, fmt.Errorf("completion cannot be published: %w", err))
		}
		return outcome{verdict: succeeded, action: ack, completion: msg}
	case effects.IsPermanent(r.err):
		return failure(in, r.err)
	case in.stopping:
		// Not a failed attempt: the work goes back to the stream for this
		// or another dispatcher to pick up.
		return outcome{verdict: interrupted, action: nak, err: r.err}
	case in.attempt >= in.maxAttempts:
		return failure(in, r.err)
	}
	delay, asked := effects.RetryDelay(r.err)
	if !asked {
		delay = retry.Policy{Min: in.retryBase, Max: in.maxDelay}.Delay(in.attempt)
	}
	delay = min(delay, in.maxDelay)
	if !in.retryBy.IsZero() && in.now.Add(delay).After(in.retryBy) {
		delay = in.retryBy.Sub(in.now)
		if delay <= 0 {
			return failure(in, fmt.Errorf("no retry possible before the stream's retention (max age) removes the effect; last error: %w", r.err))
		}
	}
	return outcome{verdict: retried, action: nak, delay: delay, err: r.err}
}

// failure is a failed completion and a Term.
func failure(in attemptInfo, err error) outcome {
	return outcome{verdict: failed, action: term, err: err, completion: failedMsg(in, errorText(err))}
}

func failedMsg(in attemptInfo, text string) *nats.Msg {
	if len(text) > maxErrorText {
		text = text[:maxErrorText] + "… (truncated)"
	}
	msg, err := effects.CompletionMsg(in.effect.Ref(), effects.Completion{
		EffectID: in.effect.ID, Kind: in.effect.Kind, Status: effects.StatusFailed,
		Error: &text, Attempts: in.attempt, CompletedAt: in.now})
	if err != nil {
		// A Completion of strings and numbers always encodes.
		panic(fmt.Sprintf("dispatcher: encode failed completion: %v", err))
	}
	return msg
}

// errShutdown is the cause of a handler context cancelled by a shutdown
// whose grace period ran out.
var errShutdown = errors.New("dispatcher shutting down")

func errorText(err error) string {
	if p, ok := errors.AsType[*PanicError](err); ok {
		return fmt.Sprintf("panic: %v", p.Value)
	}
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}
