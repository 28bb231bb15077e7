package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

func TestTail(t *testing.T) {
	n, js := oncallNATS(t)
	t.Setenv("NATS_URL", n.URL)
	ctx := context.Background()
	round := 0 // a new event id per round: the stream drops duplicate msg ids
	complete := func(id, kind string, status effects.Status, errText string) {
		t.Helper()
		comp := effects.Completion{EffectID: id, Kind: kind, Status: status, Attempts: 1, CompletedAt: time.Now()}
		if errText != "" {
			comp.Error = &errText
		} else {
			comp.Completion = json.RawMessage(`{"ok": true}`)
		}
		msg, err := effects.CompletionMsg(effects.Ref{ID: id, Kind: kind, EventID: fmt.Sprint("ev", round)}, comp)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	const id1, id2, id3, old = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
		"33333333-3333-4333-8333-333333333333", "44444444-4444-4444-8444-444444444444"
	// Published before the tail starts: not shown (from now).
	complete(old, "echo", effects.StatusSucceeded, "")

	for _, tc := range []struct {
		args  []string
		check func(out string) bool
	}{
		{[]string{"--kind", "echo", "--count", "2"}, func(out string) bool {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			return len(lines) == 2 && strings.Contains(lines[0], id1) && strings.Contains(lines[0], "succeeded") &&
				strings.Contains(lines[0], `{"ok":true}`) && strings.Contains(lines[1], id3) && strings.Contains(lines[1], "no route to host") &&
				!strings.Contains(out, old)
		}},
		{[]string{"--json", "--count", "3"}, func(out string) bool {
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 3 {
				return false
			}
			var c effects.Completion
			return json.Unmarshal([]byte(lines[1]), &c) == nil && c.EffectID == id2 && c.Kind == "mail" && c.Status == effects.StatusFailed
		}},
	} {
		round++
		var stdout, stderr syncBuffer
		reading := make(chan struct{})
		code := make(chan int, 1)
		go func() { code <- tail(ctx, tc.args, &stdout, &stderr, func() { close(reading) }) }()
		select {
		case <-reading:
		case c := <-code:
			t.Fatalf("effects tail %v: exit %d before reading\n%s", tc.args, c, stderr.String())
		}
		complete(id1, "echo", effects.StatusSucceeded, "")
		complete(id2, "mail", effects.StatusFailed, "bounced")
		complete(id3, "echo", effects.StatusFailed, "dial: no route to host")
		select {
		case c := <-code:
			if c != 0 || !tc.check(stdout.String()) {
				t.Errorf("effects tail %v: exit %d, output:\n%s\nstderr:\n%s", tc.args, c, stdout.String(), stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("effects tail %v did not stop after its count; output:\n%s\nstderr:\n%s", tc.args, stdout.String(), stderr.String())
		}
	}

	// Ctrl-C (a cancelled context) stops it with exit 0.
	cctx, cancel := context.WithCancel(ctx)
	code := make(chan int, 1)
	var stdout, stderr syncBuffer
	go func() { code <- tail(cctx, nil, &stdout, &stderr, cancel) }()
	if c := <-code; c != 0 {
		t.Errorf("stopped tail: exit %d\n%s", c, stderr.String())
	}

	if c, _, errOut := runEffects("tail", "--kind", "a.b"); c != 2 || !strings.Contains(errOut, "--kind: invalid kind") {
		t.Errorf("bad kind: exit %d, %q", c, errOut)
	}
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	if c, _, errOut := runEffects("tail"); c != 1 || !strings.Contains(errOut, "connect to NATS") {
		t.Errorf("unreachable NATS: exit %d, %q", c, errOut)
	}
}
