package reconcile

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/kindlabel"
	"github.com/effects-run/effects/pkg/effects"
)

// row is a pending row the reconciler or the scheduler claimed.
type row struct {
	id          string
	kind        *string
	payload     *string
	createdAt   pgtype.Timestamptz
	publishedAt pgtype.Timestamptz
	runAt       pgtype.Timestamptz
}

// unusable is why the row can never be handled ("" when it can): a NULL or
// invalid kind, or a created_at no effect message can carry.
func (x row) unusable() string {
	if x.kind == nil || effects.ValidateKind(*x.kind) != nil {
		return invalidReason(x.kind)
	}
	_, bad := ingest.CarriedCreatedAt(x.createdAt)
	return bad
}

// effectMsg is the row's effect message with msgID: the ingest's own
// builder, carrying run_at when the row was scheduled. The row must be
// usable.
func (x row) effectMsg(msgID string) (*nats.Msg, string) {
	createdAt, _ := ingest.CarriedCreatedAt(x.createdAt)
	runAt := ingest.CarriedRunAt(x.runAt)
	if !ingest.Scheduled(createdAt, runAt) {
		runAt = time.Time{}
	}
	payload := []byte("{}")
	if x.payload != nil {
		payload = []byte(*x.payload)
	}
	return ingest.EffectMsgAt(x.id, *x.kind, payload, createdAt, runAt, msgID), *x.kind
}

// inFlight is a row's message published and waiting for its ack.
type inFlight struct {
	row      row
	label    string
	fut      jetstream.PubAckFuture
	rejected bool
}

// rowPublisher publishes claimed rows: their effect messages, or the failed
// completion of a row that can never be handled, as the ingest does.
type rowPublisher struct {
	js     jetstream.JetStream
	kinds  *kindlabel.Set
	logger *slog.Logger
	who    string // "reconciler" or "scheduler", for the logs
}

// publish publishes the row's effect message with msgID, or its failed
// completion when the message is over the server's max_payload.
func (p rowPublisher) publish(x row, msgID string) (inFlight, error) {
	msg, kind := x.effectMsg(msgID)
	maxPayload := int64(0)
	if nc := p.js.Conn(); nc != nil {
		maxPayload = nc.MaxPayload()
	}
	if err := effects.CheckSize(msg, maxPayload); err != nil {
		return p.reject(x, fmt.Sprintf("the effect message is %d bytes, more than the NATS server accepts (max_payload %d)", len(msg.Data), maxPayload), msgID)
	}
	fut, err := p.js.PublishMsgAsync(msg)
	if err != nil {
		return inFlight{}, fmt.Errorf("NATS: publish: %w", err)
	}
	return inFlight{row: x, label: p.kinds.Label(kind), fut: fut}, nil
}

// reject publishes the failed completion of a row that can never be
// handled. Its event id is the message id the row's effect would have had.
func (p rowPublisher) reject(x row, reason, eventID string) (inFlight, error) {
	kind := ""
	if x.kind != nil {
		kind = *x.kind
	}
	label := p.kinds.Label(kind)
	if effects.ValidateKind(kind) != nil {
		kind = "invalid"
	}
	ref := effects.Ref{ID: x.id, Kind: kind, EventID: eventID}
	msg, err := effects.CompletionMsg(ref, effects.Completion{
		EffectID: x.id, Kind: kind, Status: effects.StatusFailed, Error: &reason, CompletedAt: time.Now().UTC(),
	})
	if err != nil {
		return inFlight{}, fmt.Errorf("failed completion of %s: %w", x.id, err)
	}
	fut, err := p.js.PublishMsgAsync(msg)
	if err != nil {
		return inFlight{}, fmt.Errorf("NATS: publish: %w", err)
	}
	p.logger.Warn(p.who+": a pending row can never be handled; failing it", "effect_id", x.id, "reason", reason)
	return inFlight{row: x, label: label, fut: fut, rejected: true}, nil
}

// awaitAcks waits up to timeout in all for the acks of flights. It returns
// the flights JetStream acked (and their row ids, in order) and the first
// error, if any; a flight without an ack is neither.
func awaitAcks(flights []inFlight, timeout time.Duration) (done []inFlight, acked []string, err error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for _, f := range flights {
		select {
		case <-f.fut.Ok():
			acked = append(acked, f.row.id)
			done = append(done, f)
		case perr := <-f.fut.Err():
			if err == nil {
				err = fmt.Errorf("NATS: publish: %w", perr)
			}
		case <-timer.C:
			if err == nil {
				err = fmt.Errorf("NATS: no ack within %s", timeout)
			}
			timer.Reset(0)
		}
	}
	return done, acked, err
}

func invalidReason(kind *string) string {
	if kind == nil {
		return "kind is null"
	}
	err := effects.ValidateKind(*kind)
	return "kind is not valid: " + strings.TrimPrefix(err.Error(), effects.ErrInvalidKind.Error()+": ")
}
