package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// oncallNATS is a NATS server with the effects streams.
func oncallNATS(t *testing.T) (*testenv.NATS, jetstream.JetStream) {
	t.Helper()
	n := testenv.StartNATS(t)
	_, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return n, js
}

func publish(t *testing.T, js jetstream.JetStream, msgID, id, kind string) {
	t.Helper()
	msg := ingest.EffectMsg(id, kind, []byte(`{}`), time.Now(), msgID)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

func compact(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return "invalid: " + string(raw)
	}
	return b.String()
}

func showJSON(t *testing.T, id string) showReport {
	t.Helper()
	code, out, errOut := runEffects("show", "--json", id)
	if code != 0 {
		t.Fatalf("effects show %s: exit %d\n%s", id, code, errOut)
	}
	var rep showReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	return rep
}

func TestShowRowAndJetStream(t *testing.T) {
	pg, ids := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)
	pending := ids["echo-pending"]

	// Not published yet: the row, the consumer missing, no message.
	rep := showJSON(t, pending)
	if rep.Status != "pending" || rep.Kind != "echo" || compact(rep.Payload) != `{"n":1}` {
		t.Errorf("row = %+v", rep.Row)
	}
	if rep.JetStream == nil || rep.JetStream.ConsumerFound || len(rep.JetStream.Messages) != 0 {
		t.Fatalf("jetstream = %+v, want no consumer and no message", rep.JetStream)
	}

	// Another effect of the kind, then this one, then a dispatcher consumer
	// that has taken the first two messages and acknowledged only the other.
	publish(t, js, "evt-other", ids["echo-failed"], "echo")
	publish(t, js, "evt-1", pending, "echo")
	publish(t, js, "evt-mail", ids["mail-failed"], "mail")
	ctx := context.Background()
	cons, err := js.CreateConsumer(ctx, effects.EffectsStream, jetstream.ConsumerConfig{
		Durable: dispatcher.ConsumerName("echo"), FilterSubject: effects.Subject("echo"),
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []jetstream.Msg
	for m := range batch.Messages() {
		got = append(got, m)
	}
	if len(got) != 2 {
		t.Fatalf("fetched %d messages, want 2", len(got))
	}
	if err := got[0].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}

	rep = showJSON(t, pending)
	j := rep.JetStream
	if j == nil || !j.ConsumerFound || j.AckPending != 1 || j.NumPending != 0 || j.Scanned != 2 {
		t.Fatalf("jetstream = %+v, want the consumer with 1 ack pending and 2 messages scanned", j)
	}
	if len(j.Messages) != 1 || j.Messages[0].MsgID != "evt-1" || j.Messages[0].State != "in flight" || j.Messages[0].Sequence != 2 {
		t.Errorf("messages = %+v, want evt-1 at sequence 2 in flight", j.Messages)
	}
	code, out, _ := runEffects("show", pending)
	if code != 0 || !strings.Contains(out, "status:      pending") || !strings.Contains(out, "evt-1") ||
		!strings.Contains(out, "in flight") || !strings.Contains(out, "1 ack pending") {
		t.Errorf("text output (exit %d):\n%s", code, out)
	}

	// A final row: no JetStream lookup.
	rep = showJSON(t, ids["mail-succeeded"])
	if rep.Status != "succeeded" || compact(rep.Completion) != `{"ok":true}` || rep.CompletedAt == nil || rep.JetStream != nil {
		t.Errorf("succeeded row = %+v, jetstream %+v", rep.Row, rep.JetStream)
	}

	// Without NATS_URL the text says how to see more.
	t.Setenv("NATS_URL", "")
	if code, out, _ := runEffects("show", pending); code != 0 || !strings.Contains(out, "NATS_URL is not set") {
		t.Errorf("without NATS_URL (exit %d):\n%s", code, out)
	}
}

func TestShowErrors(t *testing.T) {
	pg, _ := oncallTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", "")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"show", "00000000-0000-4000-8000-000000000000"}, 1, "no effect 00000000-0000-4000-8000-000000000000 in effects"},
		{[]string{"show", "42"}, 2, `"42" is not an effect id`},
		{[]string{"show"}, 2, "want one effect id"},
		{[]string{"show", "a", "b"}, 2, "want one effect id"},
	} {
		code, _, errOut := runEffects(tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("effects %v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

// For a pending row of a table a table source publishes, `effects show`
// says whether the source's cursor passed it; with no table source ever
// run on the table, it says nothing of it.
func TestShowTableSourceState(t *testing.T) {
	pg, ids := oncallTable(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", "")
	passed := ids["echo-pending"]
	if rep := showJSON(t, passed); rep.TableSource != "" {
		t.Errorf("no table source ran: table_source %q, want none", rep.TableSource)
	}
	ctx := context.Background()
	// The cursor as a table source leaves it after publishing that row.
	if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects_cursor (name, base) VALUES ('table_source', pg_current_snapshot())`); err != nil {
		t.Fatal(err)
	}
	var waiting string
	if err := pg.Pool.QueryRow(ctx, `INSERT INTO effects (kind) VALUES ('echo') RETURNING id::text`).Scan(&waiting); err != nil {
		t.Fatal(err)
	}
	if rep := showJSON(t, passed); rep.TableSource != "published" {
		t.Errorf("a row the cursor passed: table_source %q, want published", rep.TableSource)
	}
	if rep := showJSON(t, waiting); rep.TableSource != "waiting" {
		t.Errorf("a row after the cursor: table_source %q, want waiting", rep.TableSource)
	}
	if code, out, _ := runEffects("show", waiting); code != 0 || !strings.Contains(out, "not published yet") {
		t.Errorf("text output (exit %d):\n%s", code, out)
	}
}
