package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/completer"
	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/operator"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

type retryOutput struct {
	DryRun  bool                   `json:"dry_run"`
	Results []operator.RetryResult `json:"results"`
}

func retryJSON(t *testing.T, wantCode int, args ...string) retryOutput {
	t.Helper()
	code, out, errOut := runEffects(append([]string{"retry", "--json"}, args...)...)
	if code != wantCode {
		t.Fatalf("effects retry %v: exit %d, want %d\n%s", args, code, wantCode, errOut)
	}
	var res retryOutput
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	return res
}

type rerunMark struct {
	at *time.Time
	by *string
}

func rerunMarks(t *testing.T, pg *testenv.Postgres) map[string]rerunMark {
	t.Helper()
	rows, err := pg.Pool.Query(context.Background(), `SELECT id::text, rerun_requested_at, rerun_requested_by FROM effects`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]rerunMark{}
	for rows.Next() {
		var id string
		var m rerunMark
		if err := rows.Scan(&id, &m.at, &m.by); err != nil {
			t.Fatal(err)
		}
		out[id] = m
	}
	return out
}

// streamEffects reads every message of the EFFECTS stream.
func streamEffects(t *testing.T, js jetstream.JetStream) []jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *m)
	}
	return out
}

func TestRetryPublishesAndMarks(t *testing.T) {
	pg, ids := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)

	// A dry run lists both failed rows, oldest first, and changes nothing.
	out := retryJSON(t, 0, "--status", "failed", "--dry-run")
	if !out.DryRun || len(out.Results) != 2 || out.Results[0].ID != ids["echo-failed"] || out.Results[1].ID != ids["mail-failed"] ||
		out.Results[0].Outcome != "would retry" {
		t.Fatalf("dry run = %+v", out)
	}
	if msgs := streamEffects(t, js); len(msgs) != 0 {
		t.Fatalf("a dry run published %d messages", len(msgs))
	}
	for id, m := range rerunMarks(t, pg) {
		if m.at != nil {
			t.Fatalf("a dry run marked %s", id)
		}
	}

	// By selection: only the echo row.
	out = retryJSON(t, 0, "--status", "failed", "--kind", "echo", "--by", "alice")
	if len(out.Results) != 1 || out.Results[0].Outcome != "retried" || out.Results[0].ID != ids["echo-failed"] {
		t.Fatalf("retry = %+v", out)
	}
	msgs := streamEffects(t, js)
	if len(msgs) != 1 {
		t.Fatalf("%d messages in the stream, want 1", len(msgs))
	}
	m := msgs[0]
	msgID := m.Header.Get(jetstream.MsgIDHeader)
	if m.Subject != "effects.echo" || msgID != out.Results[0].MsgID || !strings.HasPrefix(msgID, "retry:"+ids["echo-failed"]+":") {
		t.Errorf("message subject %s, msg id %s; want effects.echo, retry:<id>:<uuid> = %s", m.Subject, msgID, out.Results[0].MsgID)
	}
	var e effects.Effect
	if err := json.Unmarshal(m.Data, &e); err != nil {
		t.Fatalf("message body: %v\n%s", err, m.Data)
	}
	if e.ID != ids["echo-failed"] || e.Kind != "echo" || compact(e.Payload) != `{"n":2}` || e.CreatedAt.IsZero() {
		t.Errorf("effect = %+v", e)
	}
	marks := rerunMarks(t, pg)
	if mk := marks[ids["echo-failed"]]; mk.at == nil || mk.by == nil || *mk.by != "alice" {
		t.Errorf("echo row's mark = %+v, want asked by alice", mk)
	}
	if mk := marks[ids["mail-failed"]]; mk.at != nil {
		t.Errorf("the mail row was marked")
	}

	// By id, twice: two runs with their own dedupe ids, both stored.
	out = retryJSON(t, 0, ids["mail-failed"], ids["echo-pending"])
	if len(out.Results) != 2 || out.Results[0].Outcome != "retried" || out.Results[1].Outcome != "retried" {
		t.Fatalf("retry by id = %+v", out)
	}
	out2 := retryJSON(t, 0, ids["mail-failed"])
	if out2.Results[0].MsgID == out.Results[0].MsgID {
		t.Errorf("two re-runs share the msg id %s", out2.Results[0].MsgID)
	}
	if got := len(streamEffects(t, js)); got != 4 {
		t.Errorf("%d messages in the stream, want 4", got)
	}
	if mk := rerunMarks(t, pg)[ids["mail-failed"]]; mk.at == nil || mk.by != nil {
		t.Errorf("mail row's mark = %+v, want asked by nobody named", mk)
	}
	code, text, _ := runEffects("retry", "--dry-run", ids["echo-failed"])
	if code != 0 || !strings.Contains(text, "would retry") || !strings.HasPrefix(text, "ID ") {
		t.Errorf("text output (exit %d):\n%s", code, text)
	}
}

func TestRetryRefusals(t *testing.T) {
	pg, ids := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)
	t.Setenv("EFFECTS_RETAIN_FAILED", "720h")
	gone := "00000000-0000-4000-8000-000000000000"

	// A succeeded row and a gone row fail (exit 1); the failed row among
	// them is still re-run.
	out := retryJSON(t, 1, ids["mail-succeeded"], gone, ids["echo-failed"])
	r := out.Results
	if len(r) != 3 || r[0].Outcome != "error" || !strings.Contains(r[0].Error, "a success is final") ||
		r[1].Outcome != "error" || !strings.Contains(r[1].Error, "effect "+gone+" has no row in effects: it was removed by retention") ||
		r[2].Outcome != "retried" {
		t.Fatalf("results = %+v", r)
	}
	if got := len(streamEffects(t, js)); got != 1 {
		t.Errorf("%d messages in the stream, want 1", got)
	}

	// A message over the server's max_payload is refused, the row unmarked.
	nc, _ := n.Connect(t)
	big := `{"s":"` + strings.Repeat("x", int(nc.MaxPayload())) + `"}`
	var bigID string
	if err := pg.Pool.QueryRow(context.Background(),
		`INSERT INTO effects (kind, status, payload) VALUES ('echo', 'failed', $1) RETURNING id::text`, big).Scan(&bigID); err != nil {
		t.Fatal(err)
	}
	out = retryJSON(t, 1, bigID)
	if r := out.Results[0]; r.Outcome != "error" || !strings.Contains(r.Error, "max_payload") {
		t.Errorf("oversized = %+v", r)
	}
	if mk := rerunMarks(t, pg)[bigID]; mk.at != nil {
		t.Errorf("an oversized re-run marked the row")
	}

	// NATS unreachable: exit 1, nothing marked.
	t.Setenv("NATS_URL", "nats://127.0.0.1:1")
	code, _, errOut := runEffects("retry", ids["mail-failed"])
	if code != 1 || !strings.Contains(errOut, "connect to NATS") {
		t.Errorf("unreachable NATS: exit %d, %q", code, errOut)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "name effect ids, or select rows with --status failed"},
		{[]string{"--status", "pending"}, "only failed rows are re-run by selection"},
		{[]string{"--status", "failed", ids["echo-failed"]}, "not both"},
		{[]string{"--kind", "echo", ids["echo-failed"]}, "--kind and --since select rows with --status failed"},
		{[]string{"nope"}, `"nope" is not an effect id`},
		{[]string{"--status", "failed", "--since", "-2h"}, "want a positive duration"},
		{[]string{"--status", "failed", "--kind", "x y"}, "--kind: invalid kind"},
	} {
		code, _, errOut := runEffects(append([]string{"retry"}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("effects retry %v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

// End to end with the in-process dispatcher and completer: a handler fails
// an effect for good, the completer writes failed; `effects retry` runs it
// again, the handler succeeds, and the success replaces the failure.
func TestRetryEndToEnd(t *testing.T) {
	pg, _ := oncallTable(t)
	n, js := oncallNATS(t)
	t.Setenv("DATABASE_URL", pg.URL)
	t.Setenv("NATS_URL", n.URL)
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	var calls atomic.Int32
	reg := effects.NewRegistry()
	reg.Handle("flaky", func(ctx context.Context, e effects.Effect) (any, error) {
		if calls.Add(1) == 1 {
			return nil, effects.Permanent(errors.New("downstream said no"))
		}
		return map[string]string{"event": e.EventID}, nil
	})
	d, err := dispatcher.New(dispatcher.Config{}, reg, js, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	c, err := completer.New(completer.Config{DatabaseURL: pg.URL, Table: "effects"}.WithDefaults(), pg.Pool, js, logger, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { _ = d.Run(ctx); done <- struct{}{} }()
	go func() { _ = c.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })

	var id string
	if err := pg.Pool.QueryRow(ctx, `INSERT INTO effects (kind, payload) VALUES ('flaky', '{"to":"x"}') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	// The first run, as the table source publishes it (msg id = row id).
	var createdAt time.Time
	if err := pg.Pool.QueryRow(ctx, `SELECT created_at FROM effects WHERE id = $1`, id).Scan(&createdAt); err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, ingest.EffectMsg(id, "flaky", []byte(`{"to":"x"}`), createdAt, id)); err != nil {
		t.Fatal(err)
	}
	waitStatus := func(want string) showReport {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			rep := showJSON(t, id)
			if rep.Status == want {
				return rep
			}
			if time.Now().After(deadline) {
				t.Fatalf("row %s is %s after 30s, want %s", id, rep.Status, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	rep := waitStatus("failed")
	if rep.Error == nil || !strings.Contains(*rep.Error, "downstream said no") {
		t.Fatalf("failed row = %+v", rep.Row)
	}

	out := retryJSON(t, 0, "--by", "bob", id)
	rep = waitStatus("succeeded")
	var comp map[string]string
	if err := json.Unmarshal(rep.Completion, &comp); err != nil || comp["event"] != out.Results[0].MsgID {
		t.Errorf("completion %s, want the re-run's event %s", rep.Completion, out.Results[0].MsgID)
	}
	if rep.RerunRequestedBy == nil || *rep.RerunRequestedBy != "bob" || rep.RerunRequestedAt == nil {
		t.Errorf("re-run record = %v %v, want asked by bob", rep.RerunRequestedAt, rep.RerunRequestedBy)
	}
	if got := calls.Load(); got != 2 {
		t.Errorf("handler ran %d times, want 2", got)
	}
}
