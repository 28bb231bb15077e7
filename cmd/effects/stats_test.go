package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

func TestStats(t *testing.T) {
	pg, ids := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", "")

	stats := func() operator.Stats {
		t.Helper()
		code, out, errOut := runEffects("stats", "--json")
		if code != 0 {
			t.Fatalf("effects stats: exit %d\n%s", code, errOut)
		}
		var rep operator.Stats
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("--json: %v\n%s", err, out)
		}
		return rep
	}
	rep := stats()
	if rep.Total != (operator.StatusCount{Pending: 1, Succeeded: 1, Failed: 2}) || rep.OldestPendingAge == "" || rep.NATS {
		t.Errorf("stats = %+v", rep)
	}
	if len(rep.Kinds) != 2 || rep.Kinds[0].Kind != "echo" || rep.Kinds[0].StatusCount != (operator.StatusCount{Pending: 1, Failed: 1}) ||
		rep.Kinds[1].StatusCount != (operator.StatusCount{Succeeded: 1, Failed: 1}) || rep.Kinds[1].OldestPendingAge != "" {
		t.Errorf("kinds = %+v", rep.Kinds)
	}
	if age, err := time.ParseDuration(rep.OldestPendingAge); err != nil || age < 3*time.Hour || age > 4*time.Hour {
		t.Errorf("oldest pending age %q, want about 3h", rep.OldestPendingAge)
	}
	code, out, _ := runEffects("stats", "--since", "1h", "--json")
	if code != 0 || !strings.Contains(out, `"since": "1h0m0s"`) || !strings.Contains(out, `"succeeded": 1`) || strings.Contains(out, `"pending": 1`) {
		t.Errorf("--since 1h (exit %d):\n%s", code, out)
	}

	// With NATS: echo's consumer has two messages, one taken and not acked.
	t.Setenv("NATS_URL", n.URL)
	publish(t, js, "e1", ids["echo-pending"], "echo")
	publish(t, js, "e2", ids["echo-failed"], "echo")
	ctx := context.Background()
	cons, err := js.CreateConsumer(ctx, effects.EffectsStream, jetstream.ConsumerConfig{
		Durable: dispatcher.ConsumerName("echo"), FilterSubject: effects.Subject("echo"),
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	rep = stats()
	echo, mail := rep.Kinds[0].Consumer, rep.Kinds[1].Consumer
	if !rep.NATS || echo == nil || !echo.Found || echo.NumPending != 1 || echo.AckPending != 1 || mail == nil || mail.Found {
		t.Errorf("consumers: echo %+v, mail %+v", echo, mail)
	}
	code, out, _ = runEffects("stats")
	if code != 0 || !strings.Contains(out, "BACKLOG") || !strings.Contains(out, "no consumer") || !strings.Contains(out, "total") {
		t.Errorf("text (exit %d):\n%s", code, out)
	}
	if code, _, errOut := runEffects("stats", "x"); code != 2 || !strings.Contains(errOut, `unexpected argument "x"`) {
		t.Errorf("bad argument: exit %d, %q", code, errOut)
	}
}
