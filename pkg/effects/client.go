package effects

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"

	"github.com/effects-run/effects/internal/jsondec"
)

// DefaultPublishTimeout bounds a completion publish when the caller's context
// has no deadline.
const DefaultPublishTimeout = 10 * time.Second

// Client publishes completions to "effects.completed.<kind>". It is how an
// async handler's later work, in this process or any other, records the
// outcome. It is safe for concurrent use.
type Client struct {
	js  jetstream.JetStream
	now func() time.Time
}

// NewClient returns a client publishing through js.
func NewClient(js jetstream.JetStream) *Client {
	return &Client{js: js, now: time.Now}
}

// Complete records that the effect succeeded with result (any value that
// marshals to JSON; a json.RawMessage is sent as is) as its completion.
func (c *Client) Complete(ctx context.Context, ref Ref, result any) error {
	raw, err := MarshalResult(result)
	if err != nil {
		return err
	}
	return c.Publish(ctx, ref, Completion{
		EffectID: ref.ID, Kind: ref.Kind, Status: StatusSucceeded,
		Completion: raw, Attempts: ref.Attempt, CompletedAt: c.now(),
	})
}

// Fail records that the effect failed for good with cause's text as its error.
func (c *Client) Fail(ctx context.Context, ref Ref, cause error) error {
	msg := "failed"
	if cause != nil {
		msg = cause.Error()
	}
	return c.Publish(ctx, ref, Completion{
		EffectID: ref.ID, Kind: ref.Kind, Status: StatusFailed,
		Error: &msg, Attempts: ref.Attempt, CompletedAt: c.now(),
	})
}

// For returns a [Done] bound to ref.
func (c *Client) For(ref Ref) Done { return boundDone{c: c, ref: ref} }

// Publish validates comp and publishes it, waiting for JetStream's ack. The
// message id (Nats-Msg-Id) is derived from ref, so that publishing the same
// outcome of the same delivery twice stores it once.
func (c *Client) Publish(ctx context.Context, ref Ref, comp Completion) error {
	if err := comp.Validate(); err != nil {
		return err
	}
	msg, err := CompletionMsg(ref, comp)
	if err != nil {
		return err
	}
	// A ctx in a trace (an async handler's attempt) puts its traceparent
	// on the completion, so the completer's write joins that trace.
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(http.Header(msg.Header)))
	if err := CheckSize(msg, c.maxPayload()); err != nil {
		return err
	}
	return PublishAndWait(ctx, c.js, msg)
}

func (c *Client) maxPayload() int64 {
	if nc := c.js.Conn(); nc != nil {
		return nc.MaxPayload()
	}
	return 0
}

// CompletionMsg encodes comp as the NATS message that carries it, with its
// Nats-Msg-Id derived from ref.
func CompletionMsg(ref Ref, comp Completion) (*nats.Msg, error) {
	data, err := encodeCompletion(comp)
	if err != nil {
		return nil, fmt.Errorf("effects: marshal completion: %w", err)
	}
	msg := nats.NewMsg(CompletedSubject(comp.Kind))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, CompletionMsgID(ref, comp.Status))
	return msg, nil
}

// ErrTooLarge is returned (wrapped) when a message is larger than the NATS
// server accepts (its max_payload).
var ErrTooLarge = errors.New("message too large")

// CheckSize returns an error wrapping [ErrTooLarge], stating the size and
// the limit, when msg (data and headers) exceeds maxPayload bytes. A
// maxPayload of 0 or less (not connected yet) checks nothing.
func CheckSize(msg *nats.Msg, maxPayload int64) error {
	if maxPayload <= 0 {
		return nil
	}
	size := int64(len(msg.Data) + headerSize(msg.Header))
	if size > maxPayload {
		return fmt.Errorf("effects: %w: %s is %d bytes, over the NATS server's max_payload of %d bytes", ErrTooLarge, msg.Subject, size, maxPayload)
	}
	return nil
}

// headerSize is the size of h on the wire ("NATS/1.0\r\n", one line per
// value, a blank line).
func headerSize(h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": \r\n") + len(v)
		}
	}
	return n
}

// EncodeJSON is json.Marshal without HTML escaping: '<', '>' and '&' stay
// one byte each instead of six (encoding/json escapes them even inside a
// json.RawMessage), so a completion is no larger than its content.
func EncodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// CompletionMsgID is the Nats-Msg-Id of a completion: the effect id, the
// event id of the delivery (empty when unknown) and the status.
func CompletionMsgID(ref Ref, status Status) string {
	return ref.ID + ":" + ref.EventID + ":" + string(status)
}

// PublishAndWait publishes msg asynchronously and waits for the stream's ack,
// so that many goroutines publishing at once share one connection without
// waiting on each other. Without a deadline on ctx it waits at most
// [DefaultPublishTimeout].
func PublishAndWait(ctx context.Context, js jetstream.JetStream, msg *nats.Msg) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPublishTimeout)
		defer cancel()
	}
	fut, err := js.PublishMsgAsync(msg)
	if err != nil {
		return fmt.Errorf("effects: publish to %s: %w", msg.Subject, err)
	}
	select {
	case <-fut.Ok():
		return nil
	case err := <-fut.Err():
		return fmt.Errorf("effects: publish to %s: %w", msg.Subject, err)
	case <-ctx.Done():
		return fmt.Errorf("effects: publish to %s: %w", msg.Subject, context.Cause(ctx))
	}
}

// MarshalResult turns a handler's result into a completion's JSON. nil
// becomes null; a json.RawMessage must already be valid JSON.
func MarshalResult(result any) (json.RawMessage, error) {
	switch r := result.(type) {
	case nil:
		return json.RawMessage("null"), nil
	case json.RawMessage:
		if r == nil {
			return json.RawMessage("null"), nil
		}
		if !jsondec.Valid(r) && !json.Valid(r) { // jsondec first: faster, and never accepts what json.Valid refuses
			return nil, errors.New("effects: handler result is a json.RawMessage that is not valid JSON")
		}
		return r, nil
	}
	raw, err := EncodeJSON(result)
	if err != nil {
		return nil, fmt.Errorf("effects: marshal handler result: %w", err)
	}
	return raw, nil
}

type boundDone struct {
	c   *Client
	ref Ref
}

func (d boundDone) Complete(ctx context.Context, result any) error {
	return d.c.Complete(ctx, d.ref, result)
}
func (d boundDone) Fail(ctx context.Context, err error) error { return d.c.Fail(ctx, d.ref, err) }
func (d boundDone) Ref() Ref                                  { return d.ref }
