package main

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/controlkv/controlkvtest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

const selector = "EFFECTS_CUSTOM_DISPATCHER_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(selector) == "1" {
		os.Args = []string{"custom-dispatcher"}
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The binary runs both publish_rateset handlers: an effect of each kind
// gets its completion.
func TestCustomDispatcher(t *testing.T) {
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)
	p := testenv.StartProcess(t, selector, map[string]string{"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil; err = effects.EnsureStreams(ctx, js, effects.StreamOptions{}) {
		if ctx.Err() != nil {
			t.Fatal(err)
		}
	}
	ids := map[string]string{
		"publish_rateset":       "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11",
		"publish_rateset_async": "1d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c12",
	}
	for kind, id := range ids {
		msg := nats.NewMsg(effects.Subject(kind))
		msg.Header.Set(jetstream.MsgIDHeader, id)
		msg.Data = []byte(`{"id":"` + id + `","kind":"` + kind + `","payload":{"RATESET":4512},"created_at":"2026-03-14T09:26:53Z","session_variables":null}`)
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, effects.CompletedStream)
	if err != nil {
		t.Fatal(err)
	}
	for kind, id := range ids {
		p.WaitFor(t, "the completion of "+kind, func() bool {
			m, err := s.GetLastMsgForSubject(ctx, effects.CompletedSubject(kind))
			if err != nil {
				return false
			}
			c, err := effects.ParseCompletion(m.Data)
			return err == nil && c.EffectID == id && c.Status == effects.StatusSucceeded
		})
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d\n%s", code, p.Output())
	}
}
