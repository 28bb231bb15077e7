package operator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// MaxScan bounds how many messages of a kind's subject [Locate] reads to
// find an effect's messages.
const MaxScan = 10000

// Location is where an effect is in JetStream.
type Location struct {
	Stream   string `json:"stream"`
	Subject  string `json:"subject"`
	Consumer string `json:"consumer"`
	// ConsumerFound is false when no dispatcher of the kind ever ran.
	ConsumerFound bool   `json:"consumer_found"`
	NumPending    uint64 `json:"consumer_num_pending"`
	AckPending    int    `json:"consumer_ack_pending"`
	Redelivered   int    `json:"consumer_redelivered"`
	// Messages are the effect's messages in the stream (the first run and
	// any re-runs), oldest first.
	Messages []StreamMsg `json:"messages"`
	// Scanned is how many messages of the subject were read, from a minute
	// before the row was created (from the start for a created_at of
	// infinity or -infinity); Truncated says the scan stopped at its
	// bound before the end of the stream.
	Scanned   int  `json:"scanned"`
	Truncated bool `json:"truncated"`
}

// StreamMsg is one of an effect's messages in the EFFECTS stream.
type StreamMsg struct {
	Sequence  uint64    `json:"sequence"`
	MsgID     string    `json:"msg_id"`
	Published time.Time `json:"published"`
	// State is relative to the kind's dispatcher consumer: "waiting" (not
	// delivered yet), "in flight" (delivered, not acknowledged: a handler
	// has it or it waits for a redelivery) or "acknowledged"; "no
	// consumer" when there is none.
	State string `json:"state"`
}

// Locate finds r's messages in the EFFECTS stream, scanning the kind's
// subject from a minute before the row was created (the ingest publishes
// after the insert; the minute allows for clocks apart) with an ordered
// consumer, which leaves nothing behind, and reads the kind's dispatcher
// consumer. It gives up after 30 seconds.
func Locate(ctx context.Context, js jetstream.JetStream, r Row) (*Location, error) {
	if err := effects.ValidateKind(r.Kind); err != nil {
		return nil, fmt.Errorf("the row's kind cannot be in JetStream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	rep := &Location{Stream: effects.EffectsStream, Subject: effects.Subject(r.Kind),
		Consumer: dispatcher.ConsumerName(r.Kind), Messages: []StreamMsg{}}
	stream, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", effects.EffectsStream, err)
	}
	var ackFloor, delivered uint64
	cons, err := stream.Consumer(ctx, rep.Consumer)
	switch {
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	case err != nil:
		return nil, fmt.Errorf("consumer %s: %w", rep.Consumer, err)
	default:
		info, err := cons.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("consumer %s: %w", rep.Consumer, err)
		}
		rep.ConsumerFound = true
		rep.NumPending, rep.AckPending, rep.Redelivered = info.NumPending, info.NumAckPending, info.NumRedelivered
		ackFloor, delivered = info.AckFloor.Stream, info.Delivered.Stream
	}

	occ := jetstream.OrderedConsumerConfig{FilterSubjects: []string{rep.Subject}}
	if created, ok := r.CreatedAt.Finite(); ok {
		start := created.Add(-time.Minute)
		occ.DeliverPolicy, occ.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
	} // else no time to start from: the subject from its start
	oc, err := stream.OrderedConsumer(ctx, occ)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", rep.Subject, err)
	}
	for rep.Scanned < MaxScan {
		batch, err := oc.FetchNoWait(min(500, MaxScan-rep.Scanned))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", rep.Subject, err)
		}
		n := 0
		var left uint64
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			left = md.NumPending
			var e struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(m.Data(), &e) != nil || e.ID != r.ID {
				continue
			}
			sm := StreamMsg{Sequence: md.Sequence.Stream, MsgID: m.Headers().Get(jetstream.MsgIDHeader), Published: md.Timestamp}
			switch {
			case !rep.ConsumerFound:
				sm.State = "no consumer"
			case sm.Sequence <= ackFloor:
				sm.State = "acknowledged"
			case sm.Sequence <= delivered:
				sm.State = "in flight"
			default:
				sm.State = "waiting"
			}
			rep.Messages = append(rep.Messages, sm)
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("read %s: %w", rep.Subject, err)
		}
		rep.Scanned += n
		if n == 0 || left == 0 {
			return rep, nil
		}
	}
	rep.Truncated = true
	return rep, nil
}
