package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/ingest"
	"github.com/effects-run/effects/internal/schema"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// tableBundle is a migrated table in a schema of the test's own, a NATS
// server of its own, and a way to run table sources on them.
type tableBundle struct {
	t    *testing.T
	pg   *testenv.Postgres
	url  string // DATABASE_URL of the table
	pool *pgxpool.Pool
	nats *testenv.NATS
	js   jetstream.JetStream
}

func setupTable(t *testing.T) *tableBundle {
	t.Helper()
	pg := testenv.StartPostgres(t)
	b := &tableBundle{t: t, pg: pg, url: pg.URL, pool: pg.Pool}
	b.migrate()
	b.nats = testenv.StartNATS(t)
	_, b.js = b.nats.Connect(t)
	return b
}

func (b *tableBundle) migrate() {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, b.url)
	if err != nil {
		b.t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := schema.Migrate(ctx, conn, "effects"); err != nil {
		b.t.Fatal(err)
	}
}

// source is a running table source (a replica); stop stops it.
type source struct {
	src  *ingest.TableSource
	reg  *prometheus.Registry
	stop func()
}

func (b *tableBundle) startSource(configure ...func(*ingest.TableConfig)) *source {
	b.t.Helper()
	cfg := ingest.TableConfig{DatabaseURL: b.url, BatchSize: 50, RetryMax: 200 * time.Millisecond}
	for _, f := range configure {
		f(&cfg)
	}
	pool, err := ingest.OpenTablePool(cfg)
	if err != nil {
		b.t.Fatal(err)
	}
	_, js := b.nats.Connect(b.t)
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(b.t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	src, err := ingest.NewTableSource(cfg, pool, js, logger, reg)
	if err != nil {
		b.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				b.t.Errorf("table source: %v", err)
			}
			pool.Close()
		})
	}
	b.t.Cleanup(stop)
	return &source{src: src, reg: reg, stop: stop}
}

func (b *tableBundle) insert(kind, payload string) string {
	b.t.Helper()
	var id string
	if err := b.pool.QueryRow(context.Background(),
		`INSERT INTO effects (kind, payload) VALUES ($1, $2::jsonb) RETURNING id::text`, kind, payload).Scan(&id); err != nil {
		b.t.Fatal(err)
	}
	return id
}

// publishedSQL counts the rows of $1 the table source's cursor passed.
var publishedSQL = `SELECT count(*) FROM effects e WHERE id = ANY($1::uuid[]) AND ` +
	ingest.PublishedSQL(schema.Table{Name: "effects"}, "e")

// published is how many of ids the table source's cursor passed.
func (b *tableBundle) published(ids []string) int {
	b.t.Helper()
	var n int
	if err := b.pool.QueryRow(context.Background(), publishedSQL, ids).Scan(&n); err != nil {
		b.t.Fatal(err)
	}
	return n
}

// waitPublished waits until the cursor passed every id in want.
func (b *tableBundle) waitPublished(want []string) {
	b.t.Helper()
	testenv.WaitFor(b.t, 60*time.Second, fmt.Sprintf("%d rows published", len(want)), func() bool {
		return b.published(want) == len(want)
	})
}

// streamIDs reads every message of the EFFECTS stream: Nats-Msg-Id → count.
func (b *tableBundle) streamIDs() map[string]int {
	b.t.Helper()
	return streamMsgIDs(b.t, b.js)
}

func streamMsgIDs(t testing.TB, js jetstream.JetStream) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get %d: %v", seq, err)
		}
		ids[m.Header.Get(jetstream.MsgIDHeader)]++
	}
	return ids
}

func TestTableSourceWireFormat(t *testing.T) {
	b := setupTable(t)
	b.startSource()
	payload := `{"b": [1, 2], "a": "<x> & y"}`
	id := b.insert("echo", payload)
	b.waitPublished([]string{id})

	ctx := context.Background()
	s, err := b.js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, effects.Subject("echo"))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(jetstream.MsgIDHeader); got != id {
		t.Errorf("Nats-Msg-Id %q, want the row id %q", got, id)
	}
	var e effects.Effect
	if err := json.Unmarshal(m.Data, &e); err != nil {
		t.Fatalf("%s: %v", m.Data, err)
	}
	var stored, createdAt string
	if err := b.pool.QueryRow(ctx, `SELECT payload::text, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') FROM effects WHERE id = $1`, id).Scan(&stored, &createdAt); err != nil {
		t.Fatal(err)
	}
	if e.ID != id || e.Kind != "echo" || string(e.Payload) != stored || e.SessionVariables != nil {
		t.Errorf("effect %s: want id %s, kind echo, payload %s as PostgreSQL writes it, no session variables", m.Data, id, stored)
	}
	if got := e.CreatedAt.UTC().Format("2006-01-02T15:04:05.000000"); got != createdAt {
		t.Errorf("created_at %s, want %s", got, createdAt)
	}
	if !strings.Contains(string(m.Data), `"session_variables":null`) {
		t.Errorf("want session_variables null: %s", m.Data)
	}
}

// A long transaction inserts a row first and commits last, after rows
// inserted later were published: the source must still publish it. A
// rolled-back row is never published.
func TestTableSourceLateCommitAndRollback(t *testing.T) {
	b := setupTable(t)
	ctx := context.Background()
	long, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lateID string
	if err := long.QueryRow(ctx, `INSERT INTO effects (kind) VALUES ('echo') RETURNING id::text`).Scan(&lateID); err != nil {
		t.Fatal(err)
	}
	rolled, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var rolledID string
	if err := rolled.QueryRow(ctx, `INSERT INTO effects (kind) VALUES ('echo') RETURNING id::text`).Scan(&rolledID); err != nil {
		t.Fatal(err)
	}

	b.startSource()
	var later []string
	for range 20 {
		later = append(later, b.insert("echo", `{}`))
	}
	b.waitPublished(later)
	if err := rolled.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	b.waitPublished([]string{lateID})
	ids := b.streamIDs()
	if ids[rolledID] != 0 {
		t.Errorf("the rolled-back row %s was published", rolledID)
	}
	if len(ids) != 21 {
		t.Errorf("stream holds %d effects, want 21", len(ids))
	}
}

// The trigger's notification wakes an idle source: with an hour-long poll a
// row is still published at once.
func TestTableSourceWakesOnNotify(t *testing.T) {
	b := setupTable(t)
	src := b.startSource(func(c *ingest.TableConfig) { c.PollInterval = time.Hour })
	first := b.insert("echo", `{}`) // found by the first poll at start
	b.waitPublished([]string{first})
	testenv.WaitFor(t, 30*time.Second, "the source to be ready", func() bool { return src.src.Ready(context.Background()) == nil })
	b.waitPublished([]string{b.insert("echo", `{"n": 2}`)})
}

// Many connections insert at once, in single rows, multi-row statements and
// transactions (some rolled back), while two replicas run: every committed
// row is published exactly once, none that was rolled back.
func TestTableSourceConcurrentInsertsTwoReplicas(t *testing.T) {
	b := setupTable(t)
	r1 := b.startSource()
	r2 := b.startSource(func(c *ingest.TableConfig) { c.Workers = 3 })

	const writers, perWriter = 8, 60
	var mu sync.Mutex
	var committed, rolledBack []string
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			ctx := context.Background()
			for i := 0; i < perWriter; i += 3 {
				tx, err := b.pool.Begin(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				rows, err := tx.Query(ctx, `INSERT INTO effects (kind, payload)
					SELECT 'echo', jsonb_build_object('w', $1::int, 'i', $2::int + g) FROM generate_series(0, 2) g RETURNING id::text`, w, i)
				if err != nil {
					t.Error(err)
					return
				}
				ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Error(err)
					return
				}
				rollback := (w+i)%7 == 0
				if rollback {
					err = tx.Rollback(ctx)
				} else {
					err = tx.Commit(ctx)
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if rollback {
					rolledBack = append(rolledBack, ids...)
				} else {
					committed = append(committed, ids...)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	b.waitPublished(committed)
	ids := b.streamIDs()
	for _, id := range committed {
		if ids[id] != 1 {
			t.Errorf("row %s is in the stream %d times", id, ids[id])
		}
	}
	for _, id := range rolledBack {
		if ids[id] != 0 {
			t.Errorf("rolled-back row %s was published", id)
		}
	}
	if len(ids) != len(committed) {
		t.Errorf("stream holds %d effects, want %d", len(ids), len(committed))
	}
	// The replicas split the work without publishing a row twice.
	var published, duplicates float64
	count := func() {
		published, duplicates = 0, 0
		for _, r := range []*source{r1, r2} {
			published += testenv.MetricValue(t, r.reg, "effects_ingested_total", "outcome", "published")
			duplicates += testenv.MetricValue(t, r.reg, "effects_ingested_total", "outcome", "duplicate")
		}
	}
	// Counted just after the cursor write that waitPublished saw.
	testenv.WaitFor(t, 10*time.Second, "every row counted", func() bool { count(); return int(published+duplicates) >= len(committed) })
	if int(published) != len(committed) || duplicates != 0 {
		t.Errorf("published %v, duplicates %v; want %d and 0", published, duplicates, len(committed))
	}
	t.Logf("%d rows committed, %d rolled back; replica 1 published %v, replica 2 %v", len(committed), len(rolledBack),
		testenv.MetricValue(t, r1.reg, "effects_ingested_total"), testenv.MetricValue(t, r2.reg, "effects_ingested_total"))
}

// A row that can never succeed is failed with the reason, like the webhook
// does, and marked: it does not block the source.
func TestTableSourceRejects(t *testing.T) {
	b := setupTable(t)
	src := b.startSource(func(c *ingest.TableConfig) { c.MaxPayloadBytes = 64; c.Kinds = []string{"echo"} })
	bad := b.insert("not a kind!", `{}`)
	big := b.insert("echo", `{"x": "`+strings.Repeat("y", 100)+`"}`)
	other := b.insert("other", `{}`)
	good := b.insert("echo", `{}`)
	b.waitPublished([]string{bad, big, other, good})

	ctx := context.Background()
	cs, err := b.js.Stream(ctx, effects.CompletedStream)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ id, subject, reason string }{
		{bad, effects.InvalidKindSubject, "is not valid"},
		{big, effects.CompletedSubject("echo"), "EFFECTS_MAX_PAYLOAD_BYTES"},
		{other, effects.CompletedSubject("other"), "EFFECTS_KINDS"},
	} {
		m, err := cs.GetLastMsgForSubject(ctx, c.subject)
		if err != nil {
			t.Fatalf("%s: %v", c.subject, err)
		}
		var comp effects.Completion
		if err := json.Unmarshal(m.Data, &comp); err != nil {
			t.Fatal(err)
		}
		if comp.EffectID != c.id || comp.Status != effects.StatusFailed || comp.Error == nil || !strings.Contains(*comp.Error, c.reason) {
			t.Errorf("completion on %s: %s; want %s failed with %q", c.subject, m.Data, c.id, c.reason)
		}
	}
	ids := b.streamIDs()
	if ids[bad]+ids[big]+ids[other] != 0 || ids[good] != 1 {
		t.Errorf("stream ids %v: want only %s", ids, good)
	}
	testenv.WaitFor(t, 10*time.Second, "3 rows counted rejected", func() bool {
		return testenv.MetricValue(t, src.reg, "effects_ingested_total", "outcome", "rejected") == 3
	})
}

// While NATS is down the source pauses and is not ready; the rows inserted
// meanwhile are published once it is back.
func TestTableSourceNATSOutage(t *testing.T) {
	b := setupTable(t)
	src := b.startSource(func(c *ingest.TableConfig) { c.BacklogInterval = 20 * time.Millisecond })
	b.waitPublished([]string{b.insert("echo", `{}`)})
	b.nats.Shutdown()
	var during []string
	for range 10 {
		during = append(during, b.insert("echo", `{}`))
	}
	testenv.WaitFor(t, 30*time.Second, "not ready while NATS is down", func() bool { return src.src.Ready(context.Background()) != nil })
	// The hazard is visible: the backlog and its age.
	testenv.WaitFor(t, 30*time.Second, "a backlog of 10", func() bool {
		return testenv.MetricValue(t, src.reg, "effects_table_backlog") == 10 && testenv.MetricValue(t, src.reg, "effects_table_backlog_age_seconds") > 0
	})
	b.nats.Restart(t)
	b.waitPublished(during)
	testenv.WaitFor(t, 30*time.Second, "ready again", func() bool { return src.src.Ready(context.Background()) == nil })
	testenv.WaitFor(t, 30*time.Second, "no backlog", func() bool { return testenv.MetricValue(t, src.reg, "effects_table_backlog") == 0 })
	if got := len(b.streamIDs()); got != 11 {
		t.Errorf("stream holds %d effects, want 11", got)
	}
}

// A PostgreSQL restart pauses the source (and its LISTEN); it resumes by
// itself and publishes what was inserted after.
func TestTableSourcePostgresRestart(t *testing.T) {
	cluster := testenv.StartPGCluster(t)
	b := &tableBundle{t: t, url: cluster.URL}
	pool, err := pgxpool.New(context.Background(), cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	b.pool = pool
	b.migrate()
	b.nats = testenv.StartNATS(t)
	_, b.js = b.nats.Connect(t)
	src := b.startSource(func(c *ingest.TableConfig) { c.PollInterval = time.Hour }) // only notifications and retries
	b.waitPublished([]string{b.insert("echo", `{}`)})
	testenv.WaitFor(t, 30*time.Second, "ready", func() bool { return src.src.Ready(context.Background()) == nil })

	cluster.Stop(t)
	testenv.WaitFor(t, 30*time.Second, "not ready while PostgreSQL is down", func() bool { return src.src.Ready(context.Background()) != nil })
	cluster.Start(t)
	b.pool.Reset()
	var after []string
	for range 5 {
		after = append(after, b.insert("echo", `{}`))
	}
	b.waitPublished(after)
	testenv.WaitFor(t, 30*time.Second, "ready again", func() bool { return src.src.Ready(context.Background()) == nil })
}

// A webhook and a table source in one process share one registry (as with
// EFFECTS_SOURCE=webhook,table), in either order.
func TestTableSourceAndWebhookShareMetrics(t *testing.T) {
	b := setupTable(t)
	pool, err := ingest.OpenTablePool(ingest.TableConfig{DatabaseURL: b.url})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, tableFirst := range []bool{true, false} {
		reg := prometheus.NewRegistry()
		newTable := func() error {
			_, err := ingest.NewTableSource(ingest.TableConfig{DatabaseURL: b.url}, pool, b.js, nil, reg)
			return err
		}
		newWebhook := func() error {
			_, err := ingest.New(ingest.Config{WebhookSecret: "s"}, b.js, nil, reg)
			return err
		}
		first, second := newWebhook, newTable
		if tableFirst {
			first, second = newTable, newWebhook
		}
		if err := first(); err != nil {
			t.Fatal(err)
		}
		if err := second(); err != nil {
			t.Errorf("table first %v: %v", tableFirst, err)
		}
	}
}

// A publish JetStream refuses counts in effects_ingest_publish_errors_total;
// the row is published once the stream takes it again.
func TestTableSourceCountsPublishErrors(t *testing.T) {
	b := setupTable(t)
	src := b.startSource()
	b.waitPublished([]string{b.insert("echo", `{}`)})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := b.js.Stream(ctx, effects.EffectsStream)
	if err != nil {
		t.Fatal(err)
	}
	orig := stream.CachedInfo().Config
	full := orig
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew // holds the first effect: refuses the next
	if _, err := b.js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	id := b.insert("echo", `{}`)
	testenv.WaitFor(t, 30*time.Second, "a publish error counted", func() bool {
		return testenv.MetricValue(t, src.reg, "effects_ingest_publish_errors_total", "reason", "error") > 0
	})
	if _, err := b.js.UpdateStream(ctx, orig); err != nil {
		t.Fatal(err)
	}
	b.waitPublished([]string{id})
	if got := testenv.MetricValue(t, src.reg, "effects_ingest_publish_errors_total", "reason", "timeout"); got != 0 {
		t.Errorf("publish_errors{reason=timeout} = %v, want 0", got)
	}
}

// A transaction that wrote something and stays open holds back the
// snapshot's xmin for the whole cluster: the rows committed meanwhile must
// still be published at once, and stay published (not again) when the
// source restarts while it is open; the durable cursor remembers the open
// transaction, and its row is published once when it commits.
func TestTableSourceLongTransaction(t *testing.T) {
	b := setupTable(t)
	ctx := context.Background()
	long, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = long.Rollback(ctx) }()
	var longXid, longID string
	if err := long.QueryRow(ctx, `INSERT INTO effects (kind) VALUES ('echo') RETURNING id::text, txid::text`).Scan(&longID, &longXid); err != nil {
		t.Fatal(err)
	}

	src := b.startSource()
	var during []string
	for range 30 {
		during = append(during, b.insert("echo", `{}`))
	}
	start := time.Now()
	b.waitPublished(during)
	t.Logf("30 rows published %s after the last insert, with a transaction open", time.Since(start).Round(time.Millisecond))
	// The durable cursor is held at the open transaction.
	var held bool
	if err := b.pool.QueryRow(ctx, `SELECT NOT pg_visible_in_snapshot($1::xid8, base) FROM effects_cursor`, longXid).Scan(&held); err != nil || !held {
		t.Fatalf("the cursor's base sees the open transaction %s as finished (%v, %v)", longXid, held, err)
	}

	// A restart while it is open publishes nothing again.
	src.stop()
	src = b.startSource()
	more := b.insert("echo", `{}`)
	b.waitPublished([]string{more})
	testenv.WaitFor(t, 10*time.Second, "the restarted source to count the 1 new row, and no other", func() bool {
		return testenv.MetricValue(t, src.reg, "effects_ingested_total") == 1
	})

	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	b.waitPublished([]string{longID})
	ids := b.streamIDs()
	if ids[longID] != 1 || len(ids) != 32 {
		t.Errorf("the late row is in the stream %d times, the stream holds %d ids; want once and 32", ids[longID], len(ids))
	}
	for _, id := range append(during, more) {
		if ids[id] != 1 {
			t.Errorf("row %s is in the stream %d times", id, ids[id])
		}
	}
}

// Two replicas: one owns the cursor, the other waits and takes over when
// the owner stops, and again when the new owner's session is killed (as a
// kill -9 or a lost connection ends it); every row is published, each is
// stored once.
func TestTableSourceOwnerHandover(t *testing.T) {
	b := setupTable(t)
	ctx := context.Background()
	r1 := b.startSource()
	testenv.WaitFor(t, 30*time.Second, "replica 1 to own the cursor", func() bool {
		return testenv.MetricValue(t, r1.reg, "effects_table_cursor_owner") == 1
	})
	r2 := b.startSource()
	testenv.WaitFor(t, 30*time.Second, "replica 2 ready, waiting", func() bool { return r2.src.Ready(ctx) == nil })
	if got := testenv.MetricValue(t, r2.reg, "effects_table_cursor_owner"); got != 0 {
		t.Fatalf("replica 2 owns the cursor too (%v)", got)
	}
	var ids []string
	ids = append(ids, b.insertN(40, `{}`)...)
	b.waitPublished(ids)

	// Rows keep coming while the owner stops.
	stopped := make(chan struct{})
	go func() { r1.stop(); close(stopped) }()
	ids = append(ids, b.insertN(40, `{}`)...)
	<-stopped
	testenv.WaitFor(t, 30*time.Second, "replica 2 to take over", func() bool {
		return testenv.MetricValue(t, r2.reg, "effects_table_cursor_owner") == 1
	})
	b.waitPublished(ids)

	// A third replica waits; the owner's session is killed.
	r3 := b.startSource()
	testenv.WaitFor(t, 30*time.Second, "replica 3 ready, waiting", func() bool { return r3.src.Ready(ctx) == nil })
	if _, err := b.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND classid = $1::int8 >> 32 AND objid = 'effects'::regclass::oid`, ingest.SourceLockKeyHigh); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, b.insertN(40, `{}`)...)
	testenv.WaitFor(t, 30*time.Second, "replica 3 to take over", func() bool {
		return testenv.MetricValue(t, r3.reg, "effects_table_cursor_owner") == 1
	})
	b.waitPublished(ids)
	b.checkStoredOnce(ids)
}

// The cursor migration (006) on a table the claim-and-mark source used: rows it
// published, rows of the webhook, completed rows and rows it had not
// published yet. The cursor publishes only the last, once, and then the
// rows inserted after the migration.
func TestTableSourceAfterCursorMigration(t *testing.T) {
	pg := testenv.StartPostgres(t)
	b := &tableBundle{t: t, pg: pg, url: pg.URL, pool: pg.Pool}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := schema.MigrateTo(ctx, conn, "effects", 4); err != nil {
		t.Fatal(err)
	}
	old := func(sql string) []string {
		rows, err := b.pool.Query(ctx, sql)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	published := old(`INSERT INTO effects (kind, published_at) SELECT 'echo', now() FROM generate_series(1, 5) RETURNING id::text`)
	webhook := old(`INSERT INTO effects (kind, published_at) SELECT 'echo', '-infinity' FROM generate_series(1, 5) RETURNING id::text`)
	done := old(`INSERT INTO effects (kind, status) SELECT 'echo', 'succeeded' FROM generate_series(1, 5) RETURNING id::text`)
	waiting := old(`INSERT INTO effects (kind) SELECT 'echo' FROM generate_series(1, 5) RETURNING id::text`)
	b.migrate()

	b.nats = testenv.StartNATS(t)
	_, b.js = b.nats.Connect(t)
	b.startSource()
	b.waitPublished(waiting)
	after := b.insertN(3, `{}`)
	b.waitPublished(after)
	b.checkStoredOnce(append(waiting, after...))
	// The rows from before the migration read as published to the cursor.
	if got := b.published(append(append(published, webhook...), done...)); got != 15 {
		t.Errorf("%d of the 15 old published or completed rows read as published", got)
	}
}
