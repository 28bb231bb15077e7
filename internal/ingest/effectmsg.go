package ingest

import (
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
)

// EffectMsg builds the message the ingest publishes for a row (the wire
// format of effects.Effect, built by the same code as the webhook's and the
// table source's), on "effects.<kind>" with Nats-Msg-Id msgID. Other
// publishers of effects (the `effects retry` command) use it so that there is
// one builder of the format. payload and sessionVars must be valid JSON;
// sessionVars may be nil.
func EffectMsg(msgID, id, kind string, payload []byte, createdAt time.Time, sessionVars []byte) *nats.Msg {
	data := appendEffect(make([]byte, 0, effectSize(id, kind, payload, sessionVars)), id, kind, payload, createdAt, sessionVars)
	return &nats.Msg{
		Subject: effects.Subject(kind),
		Data:    data,
		Header:  nats.Header{jetstream.MsgIDHeader: []string{msgID}},
	}
}
