// Command auditlog is an example of another team's consumer: it writes every
// completion of every kind to a log, one JSON line each, through a durable
// consumer of its own on the completion stream.
//
// It shows the rules of the README's "Other teams' consumers": its own
// durable name (never the dispatcher's dispatcher-<kind>), explicit acks on
// its own consumer only, each message checked against the v1 schema, and no
// publishing at all.
//
// Settings: NATS_URL (default nats://127.0.0.1:4222), AUDIT_CONSUMER (the
// durable name, default audit-log), AUDIT_DELIVER (all, the default: from
// the start of retention; new: from now).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/schemas"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "auditlog:", err)
		os.Exit(1)
	}
}

// config is the example's settings, read from the environment.
type config struct {
	URL      string
	Consumer string
	Deliver  jetstream.DeliverPolicy
}

func readConfig(getenv func(string) string) (config, error) {
	c := config{URL: getenv("NATS_URL"), Consumer: getenv("AUDIT_CONSUMER"), Deliver: jetstream.DeliverAllPolicy}
	if c.URL == "" {
		c.URL = nats.DefaultURL
	}
	if c.Consumer == "" {
		c.Consumer = "audit-log"
	}
	if c.Consumer == "dispatcher" || len(c.Consumer) > len("dispatcher-") && c.Consumer[:len("dispatcher-")] == "dispatcher-" {
		return config{}, fmt.Errorf("AUDIT_CONSUMER=%s: dispatcher-<kind> names are the dispatcher's consumers; use a name of your own", c.Consumer)
	}
	switch d := getenv("AUDIT_DELIVER"); d {
	case "", "all":
	case "new":
		c.Deliver = jetstream.DeliverNewPolicy
	default:
		return config{}, fmt.Errorf("AUDIT_DELIVER=%s: want all or new", d)
	}
	return c, nil
}

// run logs completions to out until ctx ends.
func run(ctx context.Context, getenv func(string) string, out io.Writer) error {
	cfg, err := readConfig(getenv)
	if err != nil {
		return err
	}
	v, err := schemas.NewValidator()
	if err != nil {
		return err
	}
	nc, err := nats.Connect(cfg.URL, nats.Name("auditlog"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to NATS_URL=%s: %w", cfg.URL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, effects.CompletedStream, jetstream.ConsumerConfig{
		Durable:        cfg.Consumer,
		Description:    "auditlog example: every completion to a log",
		FilterSubjects: []string{effects.CompletedSubjects},
		AckPolicy:      jetstream.AckExplicitPolicy,
		DeliverPolicy:  cfg.Deliver,
	})
	if err != nil {
		return fmt.Errorf("consumer %s on %s: %w", cfg.Consumer, effects.CompletedStream, err)
	}
	log := slog.New(slog.NewJSONHandler(out, nil))
	cc, err := cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			log.Error("not a JetStream message", "subject", m.Subject(), "error", err)
			return
		}
		if err := v.Completion(m.Data()); err != nil {
			// Redelivering a malformed message will not mend it.
			log.Warn("malformed completion", "subject", m.Subject(), "stream_seq", meta.Sequence.Stream, "error", err.Error())
			ackOrLog(log, m.Term())
			return
		}
		var c effects.Completion
		if err := json.Unmarshal(m.Data(), &c); err != nil {
			log.Warn("malformed completion", "subject", m.Subject(), "stream_seq", meta.Sequence.Stream, "error", err.Error())
			ackOrLog(log, m.Term())
			return
		}
		attrs := []any{"effect_id", c.EffectID, "kind", c.Kind, "status", c.Status, "attempts", c.Attempts,
			"completed_at", c.CompletedAt, "stream_seq", meta.Sequence.Stream}
		if c.Error != nil {
			attrs = append(attrs, "error", *c.Error)
		}
		log.Info("completion", attrs...)
		// Acked once written: a crash before this line logs the completion
		// again after the restart (at least once).
		ackOrLog(log, m.DoubleAck(ctx))
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	cc.Drain()
	<-cc.Closed()
	return nil
}

func ackOrLog(log *slog.Logger, err error) {
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("ack", "error", err)
	}
}
