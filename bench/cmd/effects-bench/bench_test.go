package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestCPUAndMemoryOfAProcess(t *testing.T) {
	before, err := cpuOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until the counter moves (it counts in 10 ms ticks).
	var after time.Duration
	for x := 0; after <= before; x++ {
		for i := 0; i < 1e6; i++ {
			x ^= i
		}
		if after, err = cpuOf(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	hwm, rss, err := memOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 || hwm < rss {
		t.Errorf("VmHWM %d, VmRSS %d: want 0 < RSS <= HWM", hwm, rss)
	}
}

// TestProduce: all N items, in order, in batches of at most batch; paced,
// never ahead of the rate.
func TestProduce(t *testing.T) {
	for _, ph := range []phase{{N: 12345}, {N: 300, Rate: 1000}} {
		var next, calls int
		start := time.Now()
		err := produce(context.Background(), ph, 5000, func(_ context.Context, from, k int) error {
			if from != next || k < 1 || k > 5000 {
				t.Fatalf("insert(%d, %d) after %d items", from, k, next)
			}
			if ph.Rate > 0 {
				// Item from+k-1 is due at (from+k-1)/rate.
				if due := time.Duration(float64(from+k-1) / ph.Rate * float64(time.Second)); time.Since(start) < due-25*time.Millisecond {
					t.Errorf("items up to %d sent after %s, before they were due (%s)", from+k-1, time.Since(start), due)
				}
			}
			next += k
			calls++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if next != ph.N {
			t.Errorf("%+v: %d items inserted", ph, next)
		}
		if ph.Rate == 0 && calls != 3 {
			t.Errorf("%d batches for 12345 items, want 3 of at most 5000", calls)
		}
	}
}

// TestWebhookPostsOnlyCommittedRows: every row the webhook load POSTs is
// already visible to another connection (as it must be to the completer),
// and every row is POSTed once, in Hasura's format.
func TestWebhookPostsOnlyCommittedRows(t *testing.T) {
	ctx := context.Background()
	pool := testPool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (id uuid PRIMARY KEY, kind text NOT NULL, payload jsonb NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now(), status text NOT NULL DEFAULT 'pending')`); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	post := func(ctx context.Context, body []byte) error {
		var ev struct {
			ID    string `json:"id"`
			Event struct {
				Op   string `json:"op"`
				Data struct {
					New struct {
						ID, Kind, Status string
					} `json:"new"`
				} `json:"data"`
			} `json:"event"`
		}
		if err := json.Unmarshal(body, &ev); err != nil {
			return fmt.Errorf("body not JSON: %w", err)
		}
		row := ev.Event.Data.New
		if ev.ID == "" || ev.Event.Op != "INSERT" || row.Kind != "echo" || row.Status != "pending" {
			return fmt.Errorf("not a Hasura INSERT event of an echo row: %s", body)
		}
		var visible bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM effects WHERE id = $1)`, row.ID).Scan(&visible); err != nil {
			return err
		}
		if !visible {
			return fmt.Errorf("row %s POSTed before its INSERT committed", row.ID)
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[row.ID] {
			return fmt.Errorf("row %s POSTed twice", row.ID)
		}
		seen[row.ID] = true
		return nil
	}
	for _, ph := range []phase{{N: 2500}, {N: 200, Rate: 2000}} {
		posted, err := webhookPhase(ctx, pool, ph, 1000, 20, post)
		if err != nil {
			t.Fatal(err)
		}
		if posted != ph.N {
			t.Errorf("%+v: posted %d", ph, posted)
		}
	}
	if len(seen) != 2700 {
		t.Errorf("%d distinct rows POSTed, want 2700", len(seen))
	}
}

// testPool connects to EFFECTS_TEST_DATABASE_URL (default the local test
// database) with a private schema first in the search path, dropped at the
// end.
func testPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	base := os.Getenv("EFFECTS_TEST_DATABASE_URL")
	if base == "" {
		base = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	schema := fmt.Sprintf("bench_test_%d", time.Now().UnixNano())
	admin, err := pxConnect(ctx, base)
	if err != nil {
		t.Fatalf("PostgreSQL (EFFECTS_TEST_DATABASE_URL): %v", err)
	}
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		_, _ = admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		admin.Close()
	})
	return pool
}

func pxConnect(ctx context.Context, url string) (*pgxpool.Pool, error) {
	p, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, err
	}
	if err := p.Ping(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func TestReport(t *testing.T) {
	rep := report{When: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), Config: config{effects: 1000, batch: 500, halfFor: time.Second, command: "effects-bench -effects 1000"},
		Machine: machine{NumCPU: 2, CPUModel: "cpu", GoVersion: "go1.26", PGVersion: "15", NATSVersion: "2.15.3", LoadStart: "1 1 1", LoadEnd: "2 2 2"},
		Results: []result{
			{Name: "River", Unit: "jobs/s", N: 1000, Rate: 20000, P50: 0.1, P95: 0.2, P99: 0.3, HalfN: 1, HalfRate: 10000,
				Procs: []procResult{{Name: "river", CPU: 30, PeakRSS: 50 << 20}, {Name: "postgres", CPU: 20}}},
			{Name: "table source", Unit: "effects/s", N: 1000, Rate: 25000, P50: 0.1, P95: 0.2, P99: 0.3,
				Procs: []procResult{{Name: "load", Load: true, CPU: 5, PeakRSS: 10 << 20}, {Name: "ingest", CPU: 10, PeakRSS: 30 << 20},
					{Name: "nats-server", CPU: 15, PeakRSS: 30 << 20}, {Name: "postgres", CPU: 25}}},
		}}
	md := rep.markdown()
	for _, want := range []string{
		"| River | 20,000 jobs/s | 1.00× |",
		"| table source | 25,000 effects/s | 1.25× | 100 ms | 200 ms | 300 ms | – | – | – | – | 50.0 | 60 MiB |",
		"| table source | load (load generator) | 5.0 | 10 MiB |",
		"load average (1, 5, 15 min) before: 1 1 1; after: 2 2 2",
	} {
		if !strings.Contains(strings.ToLower(md), strings.ToLower(want)) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	path := t.TempDir() + "/chart.png"
	if err := rep.chart(path); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || len(b) < 1000 || string(b[1:4]) != "PNG" {
		t.Errorf("chart: %d bytes, %v; want a PNG", len(b), err)
	}
}

// TestCompletionWatch: a phase is done only when the completer has
// acknowledged a completion per effect and no row is pending any more.
func TestCompletionWatch(t *testing.T) {
	ctx := context.Background()
	srv, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: completedStream, Subjects: []string{"effects.completed.>"}}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateConsumer(ctx, completedStream, jetstream.ConsumerConfig{Durable: completerConsumer, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	pool := testPool(t)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (id int PRIMARY KEY, status text NOT NULL DEFAULT 'pending');
		INSERT INTO effects (id) SELECT generate_series(1, 3)`); err != nil {
		t.Fatal(err)
	}
	w := &completionWatch{js: js, conn: conn.Conn()}
	base, err := w.base(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := func(what string, done bool) {
		t.Helper()
		got, _, err := w.check(ctx, base, 3)
		if err != nil {
			t.Fatal(err)
		}
		if got != done {
			t.Errorf("%s: done %t, want %t", what, got, done)
		}
	}
	want("nothing completed", false)
	for i := range 3 {
		if _, err := js.Publish(ctx, "effects.completed.echo", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	want("completions published, none taken", false)
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 3 {
		t.Fatalf("fetched %d", len(msgs))
	}
	want("completions taken, not acknowledged", false)
	for _, m := range msgs[:2] {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want("two of three acknowledged", false)
	if err := msgs[2].DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	want("all acknowledged, rows still pending", false)
	if _, err := pool.Exec(ctx, `UPDATE effects SET status = 'succeeded'`); err != nil {
		t.Fatal(err)
	}
	want("all acknowledged and written", true)
}

func TestReplaceMarked(t *testing.T) {
	path := t.TempDir() + "/README.md"
	if ok, err := replaceMarked(path, "x"); ok || err != nil {
		t.Errorf("missing file: %t, %v; want false, nil", ok, err)
	}
	page := "# Title\n\nBefore.\n\n<!-- bench:latest -->\nold table\nmore\n<!-- /bench:latest -->\n\nAfter.\n"
	if err := os.WriteFile(path, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // twice: the markers stay for the next run
		if ok, err := replaceMarked(path, "| new | table |\n"); !ok || err != nil {
			t.Fatalf("%t, %v", ok, err)
		}
	}
	b, _ := os.ReadFile(path)
	if want := "# Title\n\nBefore.\n\n<!-- bench:latest -->\n| new | table |\n<!-- /bench:latest -->\n\nAfter.\n"; string(b) != want {
		t.Errorf("got\n%s\nwant\n%s", b, want)
	}
	if err := os.WriteFile(path, []byte("no markers\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, _ := replaceMarked(path, "x"); ok {
		t.Error("a page without markers reported as updated")
	}
}

// TestSoakVerdict: memory that levels off by the half-way mark is flat;
// memory that keeps growing is not.
func TestSoakVerdict(t *testing.T) {
	plan := &soakPlan{rate: 100, length: 10 * time.Minute}
	for s := time.Duration(0); s <= 10*time.Minute; s += soakSampleEvery {
		mib := func(f float64) int64 { return int64(f * (1 << 20)) }
		cache := mib(100)
		if s < 4*time.Minute {
			cache = mib(25 + 75*s.Minutes()/4)
		}
		leak := mib(30 + 30*s.Minutes()/10)
		plan.samples = append(plan.samples, soakSample{At: s, RSS: map[string]int64{"cache": cache, "leak": leak}})
	}
	md := soakMarkdown(config{command: "make bench"}, machine{}, result{Name: "table source", N: 60000, Rate: 100}, plan)
	for _, want := range []string{"| cache | 52 MiB | 100 MiB | 100 MiB | +0% | yes |", "| leak | 34 MiB | 43 MiB | 58 MiB | +35% | **no** |"} {
		if !strings.Contains(md, want) {
			t.Errorf("lacks %q:\n%s", want, md)
		}
	}
	csv := soakCSV(plan)
	if !strings.HasPrefix(csv, "seconds,process,rss_bytes\n0,cache,26214400\n0,leak,31457280\n") {
		t.Errorf("csv starts:\n%.120s", csv)
	}
}

func TestSecondPhaseRate(t *testing.T) {
	if got := (&config{}).secondPhaseRate(9000); got != 4500 {
		t.Errorf("without -half-rate: %v, want half the maximum, 4500", got)
	}
	if got := (&config{halfRate: 3000}).secondPhaseRate(9000); got != 3000 {
		t.Errorf("-half-rate 3000: %v, want 3000", got)
	}
}
