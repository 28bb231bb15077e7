// Command schedule-cost measures what it costs to keep N effects waiting for
// a time a week away, three ways (docs/architecture.md, "Scheduled effects"):
//
//   - schedules: nats-server message schedules (ADR-51, 2.12+): each effect
//     is a message on a subject of its own (a schedule is one per subject)
//     with Nats-Schedule "@at <time>" and Nats-Schedule-Target
//     effects.<kind>, in a stream that allows schedules;
//   - nakdelay: the dispatcher delays the delivery: each effect is delivered
//     at once and nak'ed with a delay until its time, holding a MaxAckPending
//     slot while it waits;
//   - postgres: the row waits in PostgreSQL and a poller publishes due rows;
//     what it costs is the partial index on waiting rows and the poll.
//
// For the two NATS ways it starts the nats-server binary given (make
// nats-server builds the pinned one) as a process of its own on a fresh
// store, fills it, and reports the server's resident memory (VmRSS) and
// store size, then restarts it twice (SIGTERM, then SIGKILL) and reports the
// time until the stream answers with every message, the memory after, and
// for nakdelay the deliveries that come back within one ack wait after the
// restart (redeliveries of effects that are not due). "plain" is the
// reference: the same N effect messages published on effects.<kind> to be
// run now.
//
// For postgres it makes a table in a schema of its own (the effects table's
// columns, run_at, and migration 008's index on waiting rows), inserts N rows
// due next week and reports the index's size and the poll's cost (EXPLAIN
// ANALYZE BUFFERS of the due-rows query and of the count behind the waiting
// gauge). Memory and sizes are what to compare on a shared machine; the
// timings are single runs.
//
//	make nats-server && go run ./cmd/schedule-cost -nats-server ../bin/tools/nats-server -n 1000000
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func main() {
	natsServer := flag.String("nats-server", "../bin/tools/nats-server", "the nats-server binary")
	db := flag.String("db", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL URL")
	n := flag.Int("n", 1000000, "effects waiting")
	ways := flag.String("ways", "plain,schedules,nakdelay,postgres", "ways to measure")
	ackWait := flag.Duration("ack-wait", 30*time.Second, "the nakdelay consumer's ack wait (redeliveries are counted over one ack wait and 15s after a restart)")
	flag.Parse()
	ctx := context.Background()
	for _, w := range strings.Split(*ways, ",") {
		var err error
		switch w {
		case "plain", "schedules", "nakdelay":
			err = measureNATS(ctx, *natsServer, w, *n, *ackWait)
		case "postgres":
			err = measurePostgres(ctx, *db, *n)
		default:
			err = fmt.Errorf("unknown way %q", w)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", w, err)
			os.Exit(1)
		}
	}
}

// payload is a typical small effect message body (about 250 bytes).
func effectBody(id string, created time.Time) []byte {
	return fmt.Appendf(nil, `{"id":%q,"kind":"email","payload":{"to":"someone@example.com","template":"reminder","vars":{"name":"A. Person","plan":"trial"}},"created_at":%q,"session_variables":null,"run_at":%q}`,
		id, created.Format(time.RFC3339Nano), created.Add(7*24*time.Hour).Format(time.RFC3339Nano))
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

type server struct {
	bin, dir string
	port     int
	cmd      *exec.Cmd
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *server) start() error {
	s.cmd = exec.Command(s.bin, "-js", "-sd", s.dir, "-a", "127.0.0.1", "-p", strconv.Itoa(s.port))
	s.cmd.Stdout, s.cmd.Stderr = nil, nil
	if f, err := os.OpenFile(filepath.Join(s.dir, "..", "server.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
		s.cmd.Stdout, s.cmd.Stderr = f, f
	}
	return s.cmd.Start()
}

func (s *server) stop(sig syscall.Signal) {
	_ = s.cmd.Process.Signal(sig)
	_ = s.cmd.Wait()
}

// rssMB is the server's resident memory.
func (s *server) rssMB() float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return -1
}

func dirMB(dir string) float64 {
	var total int64
	_ = filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			total += info.Size()
		}
		return nil
	})
	return float64(total) / (1 << 20)
}

// connect waits for the server to answer with the stream holding want
// messages and returns the time that took.
func (s *server) connect(ctx context.Context, want uint64) (*nats.Conn, jetstream.JetStream, time.Duration, error) {
	start := time.Now()
	deadline := start.Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", s.port), nats.Timeout(time.Second))
		if err == nil {
			js, _ := jetstream.New(nc)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			st, err := js.Stream(cctx, "EFFECTS")
			var info *jetstream.StreamInfo
			if err == nil {
				info, err = st.Info(cctx)
			}
			cancel()
			if want == 0 || err == nil && info.State.Msgs >= want {
				return nc, js, time.Since(start), nil
			}
			nc.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, nil, 0, errors.New("the server did not come back with the stream in 10 minutes")
}

func measureNATS(ctx context.Context, bin, way string, n int, ackWait time.Duration) error {
	root, err := os.MkdirTemp("", "schedule-cost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	port, err := freePort()
	if err != nil {
		return err
	}
	s := &server{bin: bin, dir: filepath.Join(root, "store"), port: port}
	if err := s.start(); err != nil {
		return err
	}
	defer func() { s.stop(syscall.SIGKILL) }()
	nc, js, _, err := s.connect(ctx, 0)
	if err != nil {
		return err
	}
	cfg := jetstream.StreamConfig{Name: "EFFECTS", Subjects: []string{"effects.*"}, MaxAge: 14 * 24 * time.Hour, Duplicates: 2 * time.Minute, Storage: jetstream.FileStorage}
	if way == "schedules" {
		cfg.Subjects = append(cfg.Subjects, "effects.schedule.*")
		cfg.AllowMsgSchedules = true
		cfg.AllowRollup = true
	}
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	base := s.rssMB()

	// Fill.
	due := time.Now().Add(7 * 24 * time.Hour).UTC()
	start := time.Now()
	ajs, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	for i := range n {
		id := uuid()
		m := &nats.Msg{Subject: "effects.email", Data: effectBody(id, time.Now()), Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, id)
		if way == "schedules" {
			m.Subject = "effects.schedule." + id
			m.Header.Set("Nats-Schedule", "@at "+due.Format(time.RFC3339))
			m.Header.Set("Nats-Schedule-Target", "effects.email")
		}
		for {
			_, err := ajs.PublishMsgAsync(m)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return fmt.Errorf("publish %d: %w", i, err)
			}
			// The server acks more slowly than we publish: wait for it.
			select {
			case <-ajs.PublishAsyncComplete():
			case <-time.After(time.Minute):
				return errors.New("publish acks did not arrive in a minute")
			}
		}
		if i%50000 == 49999 {
			select {
			case <-ajs.PublishAsyncComplete():
			case <-time.After(time.Minute):
				return errors.New("publish acks did not arrive in a minute")
			}
		}
	}
	<-ajs.PublishAsyncComplete()
	fill := time.Since(start)

	deliveries := 0
	if way == "nakdelay" {
		c, err := js.CreateOrUpdateConsumer(ctx, "EFFECTS", jetstream.ConsumerConfig{
			Durable: "dispatcher-email", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait,
			MaxAckPending: n + 1000, FilterSubject: "effects.email",
		})
		if err != nil {
			return err
		}
		for deliveries < n {
			batch, err := c.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				return err
			}
			for m := range batch.Messages() {
				if err := m.NakWithDelay(7 * 24 * time.Hour); err != nil {
					return err
				}
				deliveries++
			}
			if batch.Error() != nil {
				return batch.Error()
			}
		}
		_ = nc.Flush()
		for {
			info, err := c.Info(ctx)
			if err != nil {
				return err
			}
			if info.NumAckPending == n {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	time.Sleep(5 * time.Second)
	full := s.rssMB()
	store := dirMB(s.dir)
	nc.Close()
	fmt.Printf("%s: n=%d fill %.1fs; nats-server RSS %.0f MB empty, %.0f MB filled (%.0f B per effect); store %.0f MB\n",
		way, n, fill.Seconds(), base, full, (full-base)*(1<<20)/float64(n), store)

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t0 := time.Now()
		s.stop(sig)
		stopped := time.Since(t0)
		if err := s.start(); err != nil {
			return err
		}
		nc, js, took, err := s.connect(ctx, uint64(n))
		if err != nil {
			return err
		}
		time.Sleep(5 * time.Second)
		fmt.Printf("%s: after %v (stop took %.1fs): stream back with %d messages in %.1fs, RSS %.0f MB\n",
			way, sig, stopped.Seconds(), n, took.Seconds(), s.rssMB())
		switch way {
		case "nakdelay":
			// Deliveries within one ack wait of the restart: effects not due
			// that come back.
			c, err := js.Consumer(ctx, "EFFECTS", "dispatcher-email")
			if err != nil {
				return err
			}
			var back atomic.Int64
			cc, err := c.Consume(func(m jetstream.Msg) {
				back.Add(1)
				_ = m.NakWithDelay(7 * 24 * time.Hour)
			})
			if err != nil {
				return err
			}
			time.Sleep(ackWait + 15*time.Second)
			cc.Stop()
			info, _ := c.Info(ctx)
			fmt.Printf("%s: redelivered within %s of the restart: %d (num_redelivered %d, ack pending %d)\n",
				way, ackWait+15*time.Second, back.Load(), info.NumRedelivered, info.NumAckPending)
		case "schedules":
			// Nothing may have reached the target early.
			st, _ := js.Stream(ctx, "EFFECTS")
			info, err := st.Info(ctx, jetstream.WithSubjectFilter("effects.email"))
			if err == nil {
				fmt.Printf("%s: messages on the target subject (fired early): %d\n", way, len(info.State.Subjects))
			}
		}
		nc.Close()
	}
	return nil
}

func measurePostgres(ctx context.Context, url string, n int) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	const schema = "schedule_cost"
	stmts := []string{
		`DROP SCHEMA IF EXISTS ` + schema + ` CASCADE`,
		`CREATE SCHEMA ` + schema,
		`CREATE TABLE ` + schema + `.effects (
			id uuid PRIMARY KEY DEFAULT gen_random_uuid(), kind text NOT NULL, payload jsonb NOT NULL DEFAULT '{}',
			created_at timestamptz NOT NULL DEFAULT now(), status text NOT NULL DEFAULT 'pending', attempts int NOT NULL DEFAULT 0,
			completed_at timestamptz, completion jsonb, error text, published_at timestamptz, run_at timestamptz)`,
		`CREATE INDEX effects_pending_idx ON ` + schema + `.effects (created_at) WHERE status = 'pending'`,
		// Migration 008's indexes: rows waiting for their time, due first;
		// pending rows by when they are due.
		`CREATE INDEX effects_waiting_idx ON ` + schema + `.effects (run_at) WHERE status = 'pending' AND published_at IS NULL AND run_at > created_at`,
		`CREATE INDEX effects_due_idx ON ` + schema + `.effects ((GREATEST(created_at, run_at))) WHERE status = 'pending'`,
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	start := time.Now()
	for done := 0; done < n; done += 100000 {
		k := min(100000, n-done)
		if _, err := conn.Exec(ctx, `INSERT INTO `+schema+`.effects (kind, payload, run_at)
			SELECT 'email', '{"to":"someone@example.com","template":"reminder","vars":{"name":"A. Person","plan":"trial"}}',
			       now() + interval '7 days' + g * interval '1 ms' FROM generate_series(1, $1) g`, k); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, `ANALYZE `+schema+`.effects`); err != nil {
		return err
	}
	fill := time.Since(start)
	var idx, due, pending, heap int64
	if err := conn.QueryRow(ctx, `SELECT pg_relation_size('`+schema+`.effects_waiting_idx'), pg_relation_size('`+schema+`.effects_due_idx'),
		pg_relation_size('`+schema+`.effects_pending_idx'), pg_relation_size('`+schema+`.effects')`).Scan(&idx, &due, &pending, &heap); err != nil {
		return err
	}
	fmt.Printf("postgres: n=%d fill %.1fs; waiting index %.1f MB (%.0f B per row), due index %.1f MB, pending index %.1f MB, heap %.0f MB\n",
		n, fill.Seconds(), float64(idx)/(1<<20), float64(idx)/float64(n), float64(due)/(1<<20), float64(pending)/(1<<20), float64(heap)/(1<<20))
	poll := `SELECT id, kind, payload::text, created_at, run_at FROM ` + schema + `.effects
		WHERE status = 'pending' AND published_at IS NULL AND run_at > created_at AND run_at <= now()
		ORDER BY run_at LIMIT 500 FOR UPDATE SKIP LOCKED`
	next := `SELECT min(run_at) FROM ` + schema + `.effects WHERE status = 'pending' AND published_at IS NULL AND run_at > created_at`
	count := `SELECT count(*) FROM ` + schema + `.effects WHERE status = 'pending' AND published_at IS NULL AND run_at > created_at AND run_at > now()`
	t := schema + `.effects`
	oldestDue := `SELECT min(GREATEST(created_at, run_at)) FROM ` + t + ` WHERE status = 'pending' AND isfinite(GREATEST(created_at, run_at))`
	oldestCreated := `SELECT min(created_at) FROM ` + t + ` WHERE status = 'pending' AND isfinite(created_at) AND NOT coalesce(run_at > now(), false)`
	overdue := `SELECT min(run_at) FROM ` + t + ` WHERE status = 'pending' AND published_at IS NULL AND run_at > created_at AND run_at <= now()`
	reconcile := `SELECT id FROM ` + t + ` WHERE status = 'pending' AND GREATEST(created_at, run_at) < now() - interval '15 minutes'
		AND (published_at IS NULL OR published_at < now() - interval '15 minutes') ORDER BY GREATEST(created_at, run_at) LIMIT 100 FOR UPDATE SKIP LOCKED`
	for _, q := range []struct{ name, sql string }{
		{"poll (nothing due)", poll}, {"next due", next}, {"overdue gauge", overdue}, {"waiting count", count},
		{"oldest pending on the due index", oldestDue}, {"oldest pending on created_at, waiting rows filtered", oldestCreated},
		{"reconciler claim", reconcile},
	} {
		rows, err := conn.Query(ctx, `EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) `+q.sql)
		if err != nil {
			return err
		}
		var plan []string
		for rows.Next() {
			var line string
			_ = rows.Scan(&line)
			plan = append(plan, strings.TrimSpace(line))
		}
		if err := rows.Err(); err != nil {
			return err
		}
		// Time many runs of the query itself.
		runs := 0
		t0 := time.Now()
		for ; runs < 200 && time.Since(t0) < 20*time.Second; runs++ {
			r, err := conn.Query(ctx, q.sql)
			if err != nil {
				return err
			}
			for r.Next() {
			}
			r.Close()
		}
		fmt.Printf("postgres: %s: %s; plan: %s\n", q.name, perRun(time.Since(t0), runs), strings.Join(plan, " | "))
	}
	_, err = conn.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`)
	return err
}

func perRun(d time.Duration, runs int) string {
	return fmt.Sprintf("%.3f ms per run (wall, %d runs, shared machine)", float64(d.Microseconds())/1000/float64(runs), runs)
}
