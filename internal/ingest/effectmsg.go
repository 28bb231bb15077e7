package ingest

import (
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
)

// EffectMsg is the JetStream message of an effect row exactly as the ingest
// publishes it (same subject, same JSON, built by the same code), with msgID
// as its Nats-Msg-Id. The completer's reconciler publishes rows again with
// it. payload must be valid JSON; an empty payload goes out as {}.
func EffectMsg(id, kind string, payload []byte, createdAt time.Time, msgID string) *nats.Msg {
	return EffectMsgAt(id, kind, payload, createdAt, time.Time{}, msgID)
}

// EffectMsgAt is [EffectMsg] for a row with a run_at: the message carries
// it (a zero runAt is left out, as for a row without one).
func EffectMsgAt(id, kind string, payload []byte, createdAt, runAt time.Time, msgID string) *nats.Msg {
	if len(payload) == 0 || string(payload) == "null" {
		payload = emptyObject // a handler always gets JSON
	}
	data := appendEffect(make([]byte, 0, effectSize(id, kind, payload, nil)), id, kind, payload, createdAt, nil, runAt)
	return &nats.Msg{
		Subject: effects.Subject(kind),
		Data:    data,
		Header:  nats.Header{jetstream.MsgIDHeader: []string{msgID}},
	}
}

// CarriedCreatedAt is the time an effect message carries for a row's
// created_at, or, when it cannot carry it, the reason the row is failed
// with: 'infinity', '-infinity', NULL and years outside 0 to 9999 have no
// RFC 3339 form that consumers decode. Rows are scanned through
// pgtype.Timestamptz so that one such row fails itself, not the query that
// claimed it (a time.Time scan of 'infinity' errors for the whole batch).
func CarriedCreatedAt(ts pgtype.Timestamptz) (time.Time, string) {
	var what string
	switch {
	case ts.InfinityModifier == pgtype.Infinity:
		what = "infinity"
	case ts.InfinityModifier == pgtype.NegativeInfinity:
		what = "-infinity"
	case !ts.Valid:
		what = "null"
	default:
		t := ts.Time.UTC()
		if y := t.Year(); y >= 0 && y <= 9999 {
			return t, ""
		}
		what = t.Format(time.RFC3339Nano)
	}
	return time.Time{}, "created_at " + what + " cannot be carried by an effect message (years 0 to 9999 only)"
}

// CarriedRunAt is the time an effect message carries for a row's run_at:
// zero (left out of the message) for NULL and for the values no RFC 3339
// time can hold ('infinity', '-infinity', years outside 0 to 9999). Unlike
// created_at, such a run_at does not fail the row: the column only says
// when to run, and a row that reaches a publisher with one is due.
func CarriedRunAt(ts pgtype.Timestamptz) time.Time {
	if !ts.Valid || ts.InfinityModifier != pgtype.Finite {
		return time.Time{}
	}
	t := ts.Time.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return time.Time{}
	}
	return t
}
