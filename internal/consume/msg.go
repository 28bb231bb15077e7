package consume

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// msg is a message handed out by a Reader: settling it for good (Ack,
// DoubleAck, Term) is remembered, so that the message is settled again
// without being handed out should it come back (see Reader.settledAgain).
// Its metadata is parsed once.
type msg struct {
	jetstream.Msg
	r    *Reader
	meta *jetstream.MsgMetadata
	err  error
	seq  uint64 // stream sequence; 0 when unknown
}

func (r *Reader) wrap(jm jetstream.Msg) *msg {
	m := &msg{Msg: jm, r: r}
	m.meta, m.err = jm.Metadata()
	if m.err == nil {
		m.seq = m.meta.Sequence.Stream
	}
	return m
}

func (m *msg) Metadata() (*jetstream.MsgMetadata, error) { return m.meta, m.err }

// Ack is remembered even when it fails to be sent: the caller is done with
// the message, and a redelivery is acked again rather than run again.
func (m *msg) Ack() error {
	err := m.Msg.Ack()
	m.r.remember(m, false)
	return err
}

func (m *msg) DoubleAck(ctx context.Context) error {
	err := m.Msg.DoubleAck(ctx)
	m.r.remember(m, false)
	return err
}

func (m *msg) Term() error {
	err := m.Msg.Term()
	m.r.remember(m, true)
	return err
}

func (m *msg) TermWithReason(reason string) error {
	err := m.Msg.TermWithReason(reason)
	m.r.remember(m, true)
	return err
}
