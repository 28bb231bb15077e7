package effects

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/effects-run/effects/internal/jsondec"
)

// Status is the state of an effect row.
type Status string

const (
	// StatusPending is the state of a row no completion has been written for.
	StatusPending Status = "pending"
	// StatusSucceeded is final: a succeeded row never changes again.
	StatusSucceeded Status = "succeeded"
	// StatusFailed is the state of a row whose handler gave up. A later
	// succeeded completion (a re-run) may replace it.
	StatusFailed Status = "failed"
	// StatusCancelled is final: an operator cancelled the effect while it
	// was pending (`effects cancel`). No completion changes it; it is a
	// row status only, never a completion's.
	StatusCancelled Status = "cancelled"
)

// Effect is the message published on "effects.<kind>" for every row.
//
// Wire format (JSON):
//
//	{"id": "<row uuid>", "kind": "<kind>", "payload": <the row's payload>,
//	 "created_at": "<RFC 3339>", "session_variables": {...} | null,
//	 "run_at": "<RFC 3339>"}
//
// run_at is there only for a scheduled effect (a row whose run_at is after
// its created_at): the message is published once that time has passed, so
// a consumer never receives it earlier.
//
// The header Nats-Msg-Id holds the Hasura event id.
type Effect struct {
	// ID is the row's id.
	ID string `json:"id"`
	// Kind selects the handler.
	Kind string `json:"kind"`
	// Payload is the row's payload, byte for byte as the row held it.
	Payload json.RawMessage `json:"payload"`
	// CreatedAt is the row's created_at.
	CreatedAt time.Time `json:"created_at"`
	// SessionVariables are the Hasura session variables of the request that
	// wrote the row ("x-hasura-role", ...), nil when plain SQL wrote it.
	SessionVariables map[string]string `json:"session_variables"`
	// RunAt is the time a scheduled effect was due (the row's run_at); zero
	// for an effect that was not scheduled. The message was published no
	// earlier than this.
	RunAt time.Time `json:"run_at,omitzero"`

	// EventID is the Hasura event id (the Nats-Msg-Id header). A MANUAL
	// re-run has a new one. Not part of the JSON body.
	EventID string `json:"-"`
	// Attempt counts deliveries of this event to a handler, from 1. Not part
	// of the JSON body.
	Attempt int `json:"-"`
}

// Ref returns what a later completion of e needs, for an async handler to
// hand to the worker that finishes the job.
func (e Effect) Ref() Ref {
	return Ref{ID: e.ID, Kind: e.Kind, EventID: e.EventID, Attempt: e.Attempt}
}

// Ref names an effect to complete. ID and Kind are required; EventID and
// Attempt are known to the dispatcher and make duplicate completions of one
// delivery collapse into one.
type Ref struct {
	ID      string `json:"id"`
	Kind    string `json:"kind"`
	EventID string `json:"event_id,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
}

// Completion is the message published on "effects.completed.<kind>".
//
// Wire format (JSON):
//
//	{"effect_id": "<row uuid>", "kind": "<kind>", "status": "succeeded"|"failed",
//	 "completion": <any JSON> | null, "error": "<text>" | null,
//	 "attempts": <int>, "completed_at": "<RFC 3339>"}
type Completion struct {
	EffectID    string          `json:"effect_id"`
	Kind        string          `json:"kind"`
	Status      Status          `json:"status"`
	Completion  json.RawMessage `json:"completion"`
	Error       *string         `json:"error"`
	Attempts    int             `json:"attempts"`
	CompletedAt time.Time       `json:"completed_at"`
}

// ErrMalformedCompletion is returned (wrapped) by [ParseCompletion].
var ErrMalformedCompletion = errors.New("malformed completion")

// ParseCompletion decodes and checks a completion message.
func ParseCompletion(data []byte) (Completion, error) {
	var c Completion
	if !jsondec.Valid(data) || !parseCompletionFast(data, &c) {
		var err error
		if c, err = unmarshalCompletion(data); err != nil {
			// encoding/json's errors quote the value they refuse (a time,
			// for one) whole; the reason needs the gist.
			return Completion{}, fmt.Errorf("%w: %s", ErrMalformedCompletion, cutText(err.Error(), 256))
		}
	}
	if err := c.Validate(); err != nil {
		return Completion{}, err
	}
	return c, nil
}

// unmarshalCompletion decodes data with encoding/json, into a Completion of
// its own: one whose address reaches json.Unmarshal is on the heap, and
// ParseCompletion's is not.
func unmarshalCompletion(data []byte) (Completion, error) {
	var c Completion
	err := json.Unmarshal(data, &c)
	return c, err
}

// Validate checks the fields a completion must have.
func (c Completion) Validate() error {
	switch {
	case !IsUUID(c.EffectID):
		return fmt.Errorf("%w: effect_id %.80q is not a UUID", ErrMalformedCompletion, c.EffectID)
	case c.Status != StatusSucceeded && c.Status != StatusFailed:
		return fmt.Errorf("%w: status %.80q is neither %q nor %q", ErrMalformedCompletion, c.Status, StatusSucceeded, StatusFailed)
	case c.Attempts < 0:
		return fmt.Errorf("%w: attempts %d is negative", ErrMalformedCompletion, c.Attempts)
	case c.CompletedAt.IsZero():
		return fmt.Errorf("%w: completed_at is missing", ErrMalformedCompletion)
	case len(c.Completion) > 0 && !jsondec.Valid(c.Completion) && !json.Valid(c.Completion):
		return fmt.Errorf("%w: completion is not JSON", ErrMalformedCompletion)
	}
	return nil
}

// cutText cuts s to at most n bytes without splitting a character, marking
// the cut.
func cutText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "… (truncated)"
}

// IsUUID reports whether s is a UUID in its textual form
// (8-4-4-4-12 hex digits, any case).
func IsUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
