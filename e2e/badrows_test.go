package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
)

// TestTableSourceBadRowsAtVolume feeds the table source thousands of rows
// that can never succeed — kinds that are not valid, payloads that are not
// JSON (a table made by hand with a text payload column, which the migration
// leaves as it is), JSON the handler refuses, payloads over the limit,
// created_at values no message can carry ('infinity', year 10000) — among
// valid ones. Every bad row ends failed with its reason, none blocks the
// others, and every valid row ends succeeded, run once.
func TestTableSourceBadRowsAtVolume(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	reg := effects.NewRegistry()
	reg.Handle("count", func(_ context.Context, e effects.Effect) (any, error) {
		mu.Lock()
		calls[e.ID]++
		mu.Unlock()
		var p struct {
			N *int `json:"n"`
		}
		if err := json.Unmarshal(e.Payload, &p); err != nil || p.N == nil {
			return nil, effects.Permanent(errors.New("payload: want an object with a number n"))
		}
		return map[string]int{"n": *p.N}, nil
	})
	p := startPipeline(t, options{registry: reg, dispatcher: dispatcher.Config{Concurrency: 32}, tableSources: 1})
	ctx := context.Background()
	if _, err := p.pg.Pool.Exec(ctx, `ALTER TABLE effects ALTER COLUMN payload TYPE text USING payload::text`); err != nil {
		t.Fatal(err)
	}

	type group struct {
		name    string
		n       int
		kind    func(i int) string
		payload func(i int) string
		// createdAt is SQL for the row's created_at.
		createdAt string
		// reason is in the error of a row of this group; "" for rows that
		// succeed.
		reason string
		// runs is how often the handler runs for each row.
		runs int
	}
	badKinds := []string{"no such/kind", "", "completed", "a.b", strings.Repeat("k", 100), "ünïcode", "sp ace"}
	notJSON := []string{"not json", `{"n":`, "", `{"n":1} trailing`, "{'n':1}", "NaN", `"unterminated`}
	wrongShape := []string{`"text"`, `[1,2]`, `{"n":"one"}`, `{}`, `42`, `true`}
	groups := []group{
		{name: "valid", n: 2000, kind: func(int) string { return "count" }, payload: func(i int) string { return fmt.Sprintf(`{"n":%d}`, i) },
			createdAt: "now()", runs: 1},
		{name: "invalid kind", n: 1000, kind: func(i int) string { return badKinds[i%len(badKinds)] }, payload: func(int) string { return `{"n":1}` },
			createdAt: "now()", reason: "is not valid"},
		{name: "payload not JSON", n: 1000, kind: func(int) string { return "count" }, payload: func(i int) string { return notJSON[i%len(notJSON)] },
			createdAt: "now()", reason: "is not JSON"},
		{name: "JSON the handler refuses", n: 600, kind: func(int) string { return "count" }, payload: func(i int) string { return wrongShape[i%len(wrongShape)] },
			createdAt: "now()", reason: "want an object with a number n", runs: 1},
		{name: "payload over the limit", n: 20, kind: func(int) string { return "count" },
			payload:   func(int) string { return `{"n":1,"pad":"` + strings.Repeat("p", ingest.DefaultMaxPayloadBytes) + `"}` },
			createdAt: "now()", reason: "EFFECTS_MAX_PAYLOAD_BYTES"},
		{name: "created_at -infinity", n: 10, kind: func(int) string { return "count" }, payload: func(int) string { return `{"n":1}` },
			createdAt: "'-infinity'", reason: "cannot be carried by an effect message"},
		{name: "created_at infinity", n: 10, kind: func(int) string { return "count" }, payload: func(int) string { return `{"n":1}` },
			createdAt: "'infinity'", reason: "cannot be carried by an effect message"},
		{name: "created_at year 10000", n: 10, kind: func(int) string { return "count" }, payload: func(int) string { return `{"n":1}` },
			createdAt: "'10000-01-01T00:00:00Z'", reason: "cannot be carried by an effect message"},
	}

	// Inserted in interleaved batches, as many writers would.
	ids := map[string][]string{}
	start := time.Now()
	total := 0
	for round := 0; ; round++ {
		inserted := 0
		for _, g := range groups {
			lo, hi := round*100, min((round+1)*100, g.n)
			if lo >= hi {
				continue
			}
			var kinds, payloads []string
			for i := lo; i < hi; i++ {
				kinds = append(kinds, g.kind(i))
				payloads = append(payloads, g.payload(i))
			}
			rows, err := p.pg.Pool.Query(ctx, `INSERT INTO effects (kind, payload, created_at)
				SELECT k, pl, `+g.createdAt+` FROM unnest($1::text[], $2::text[]) AS u(k, pl) RETURNING id::text`, kinds, payloads)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					t.Fatal(err)
				}
				ids[g.name] = append(ids[g.name], id)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			inserted += hi - lo
		}
		total += inserted
		if inserted == 0 {
			break
		}
	}

	p.waitFor(3*time.Minute, "every row to leave pending", func() bool {
		var pending int
		if err := p.pg.Pool.QueryRow(ctx, `SELECT count(*) FROM effects WHERE status = 'pending'`).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		return pending == 0
	})
	took := time.Since(start)

	for _, g := range groups {
		var succeeded, failed, withReason int
		err := p.pg.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'succeeded'),
				count(*) FILTER (WHERE status = 'failed'),
				count(*) FILTER (WHERE status = 'failed' AND strpos(error, $2) > 0)
			FROM effects WHERE id = ANY($1::uuid[])`, ids[g.name], g.reason).Scan(&succeeded, &failed, &withReason)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		wrongRuns := 0
		for _, id := range ids[g.name] {
			if calls[id] != g.runs {
				wrongRuns++
			}
		}
		mu.Unlock()
		switch {
		case len(ids[g.name]) != g.n:
			t.Errorf("%s: %d rows inserted, want %d", g.name, len(ids[g.name]), g.n)
		case g.reason == "" && succeeded != g.n:
			t.Errorf("%s: %d of %d rows succeeded (%d failed)", g.name, succeeded, g.n, failed)
		case g.reason != "" && withReason != g.n:
			var example string
			_ = p.pg.Pool.QueryRow(ctx, `SELECT status || ': ' || coalesce(error, '') FROM effects
				WHERE id = ANY($1::uuid[]) AND NOT (status = 'failed' AND strpos(error, $2) > 0) LIMIT 1`, ids[g.name], g.reason).Scan(&example)
			t.Errorf("%s: %d of %d rows failed with %q (%d succeeded, %d failed); for one: %.200s",
				g.name, withReason, g.n, g.reason, succeeded, failed, example)
		}
		if wrongRuns != 0 {
			t.Errorf("%s: %d rows were not run %d time(s)", g.name, wrongRuns, g.runs)
		}
		t.Logf("  %-26s %5d rows: %d succeeded, %d failed with the reason", g.name, g.n, succeeded, withReason)
	}
	t.Logf("table source bad rows at volume: %d rows settled in %s", total, took.Round(time.Millisecond))
}
