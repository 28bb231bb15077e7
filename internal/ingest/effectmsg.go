package ingest

import (
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
)

// EffectMsg is the JetStream message of an effect row exactly as the ingest
// publishes it (same subject, same JSON, built by the same code), with msgID
// as its Nats-Msg-Id. The completer's reconciler publishes rows again with
// it. payload must be valid JSON; an empty payload goes out as {}.
func EffectMsg(id, kind string, payload []byte, createdAt time.Time, msgID string) *nats.Msg {
	if len(payload) == 0 || string(payload) == "null" {
		payload = emptyObject // a handler always gets JSON
	}
	data := appendEffect(make([]byte, 0, effectSize(id, kind, payload, nil)), id, kind, payload, createdAt, nil)
	return &nats.Msg{
		Subject: effects.Subject(kind),
		Data:    data,
		Header:  nats.Header{jetstream.MsgIDHeader: []string{msgID}},
	}
}
