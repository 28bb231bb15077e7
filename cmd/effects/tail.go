package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/envconfig"
	"github.com/effects-run/effects/internal/settings"
	"github.com/effects-run/effects/pkg/effects"
)

// tailCmd prints completions as they are published, from now, until
// Ctrl-C (or --count of them). It reads with an ordered consumer: ephemeral,
// server-side state removed when it stops, and it takes nothing from the
// completer's consumer.
func tailCmd(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signalContext()
	defer stop()
	return tail(ctx, args, stdout, stderr, nil)
}

// tail is tailCmd with a context and a hook called once it is reading
// (tests publish after it).
func tail(ctx context.Context, args []string, stdout, stderr io.Writer, reading func()) int {
	fs := flag.NewFlagSet("effects tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kind := fs.String("kind", "", "only completions of this kind")
	count := fs.Int("count", 0, "stop after this many completions; 0: until Ctrl-C")
	asJSON := fs.Bool("json", false, "print each completion as one line of JSON (its wire format)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: effects tail [--kind K] [--count N] [--json]\n\n"+
			"Prints completions (effects.completed.<kind> in NATS_URL) as they happen, from now.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "effects tail: "+format+"\n", a...)
		return code
	}
	switch {
	case fs.NArg() > 0:
		return fail(2, "unexpected argument %q", fs.Arg(0))
	case *count < 0:
		return fail(2, "--count %d: want 0 or more", *count)
	}
	subject := effects.CompletedSubjects
	if *kind != "" {
		if err := effects.ValidateKind(*kind); err != nil {
			return fail(2, "--kind: %v", err)
		}
		subject = effects.CompletedSubject(*kind)
	}
	natsURL := settings.NATSURL(envconfig.New())

	nc, js, err := connectNATS(natsURL)
	if err != nil {
		return fail(1, "%v", err)
	}
	defer nc.Close()
	stream, err := js.Stream(ctx, effects.CompletedStream)
	if err != nil {
		return fail(1, "stream %s: %v", effects.CompletedStream, err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fail(1, "read %s: %v", subject, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fail(1, "read %s: %v", subject, err)
	}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		it.Stop()
	}()
	if reading != nil {
		reading()
	}
	fmt.Fprintf(stderr, "following %s from now (Ctrl-C to stop)\n", subject)

	for seen := 0; *count == 0 || seen < *count; {
		m, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
			return 0
		}
		if err != nil {
			return fail(1, "read %s: %v", subject, err)
		}
		seen++
		if *asJSON {
			var b bytes.Buffer
			if data := m.Data(); json.Compact(&b, data) != nil {
				fmt.Fprintf(stderr, "effects tail: %s: a message that is not JSON (%d bytes)\n", m.Subject(), len(data))
				continue
			}
			b.WriteByte('\n')
			_, _ = stdout.Write(b.Bytes())
			continue
		}
		c, err := effects.ParseCompletion(m.Data())
		if err != nil {
			fmt.Fprintf(stderr, "effects tail: %s: %v\n", m.Subject(), err)
			continue
		}
		detail := "-"
		if c.Error != nil {
			detail = oneLine(c.Error, 120)
		} else if len(c.Completion) > 0 {
			s := string(c.Completion)
			detail = oneLine(&s, 120)
		}
		fmt.Fprintf(stdout, "%s  %-16s  %s  %-9s  attempts=%d  %s\n",
			c.CompletedAt.UTC().Format("2006-01-02T15:04:05.000Z"), c.Kind, c.EffectID, c.Status, c.Attempts, detail)
	}
	return 0
}
