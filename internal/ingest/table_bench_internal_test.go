package ingest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/retry"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// BenchmarkTablePublish: the table source's publish path, an op a row, in
// batches of 500 read from PostgreSQL and published to JetStream (fast
// batches where allowed), by the cursor (the owner's loop: read, publish,
// write the cursor once per batch; two batches in flight) or by the claim
// it replaced (two workers, each: SELECT ... FOR UPDATE SKIP LOCKED,
// publish, UPDATE published_at, commit; emulated here with the old
// statements and the old partial index). cpu-ns/row is this process's CPU
// time (the client and the embedded NATS server) per row; pg-cpu-ns/row the
// PostgreSQL backends' serving the source (from /proc/<pid>/schedstat: the
// database must run on this machine). Compare the modes each in a process
// of its own (-bench 'BenchmarkTablePublish$/mode=cursor', then
// mode=claim, alternated): in one process the sub-benchmark that runs first
// pays more.
func BenchmarkTablePublish(b *testing.B) {
	pg := testenv.StartEffectsTable(b, 0)
	_, js := testenv.StartNATS(b).Connect(b)
	ctx := context.Background()
	if err := effects.EnsureStreams(ctx, js, effects.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"cursor", "claim"} {
		b.Run("mode="+mode, func(b *testing.B) {
			s, err := NewTableSource(TableConfig{DatabaseURL: pg.URL}, pg.Pool, js, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			s.fast.usable(ctx)
			defer s.fast.close()
			if mode == "claim" {
				if _, err := pg.Pool.Exec(ctx, `CREATE INDEX effects_unpub_idx ON effects (created_at) WHERE published_at IS NULL AND status = 'pending'`); err != nil {
					b.Fatal(err)
				}
				defer func() { _, _ = pg.Pool.Exec(ctx, `DROP INDEX effects_unpub_idx`) }()
			}
			if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects (kind, payload)
				SELECT 'echo', jsonb_build_object('to', 'user' || g || '@example.com', 'subject', 'hello', 'n', g)
				FROM generate_series(1, $1::int) g`, b.N); err != nil {
				b.Fatal(err)
			}
			if _, err := pg.Pool.Exec(ctx, `ANALYZE effects`); err != nil {
				b.Fatal(err)
			}
			conns := make([]*pgx.Conn, 2)
			pids := make([]int, len(conns))
			for i := range conns {
				if conns[i], err = pgx.Connect(ctx, pg.URL); err != nil {
					b.Fatal(err)
				}
				defer conns[i].Close(ctx)
				if err := conns[i].QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pids[i]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			cpu0, pg0 := cpuTime(), backendCPU(b, pids)
			b.ResetTimer()
			if mode == "cursor" {
				var done atomic.Int64
				stop := errors.New("done")
				s.afterPublish = func(rows int) error {
					if done.Add(int64(rows)) >= int64(b.N) {
						return stop
					}
					return nil
				}
				if err := s.publish(ctx, conns[0], &retry.Backoff{}); !errors.Is(err, stop) {
					b.Fatal(err)
				}
			} else {
				var wg sync.WaitGroup
				for _, conn := range conns {
					wg.Go(func() {
						for {
							n, err := claimBatch(ctx, s, conn)
							if err != nil {
								b.Error(err)
								return
							}
							if n == 0 {
								return
							}
						}
					})
				}
				wg.Wait()
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/row")
			b.ReportMetric(float64(backendCPU(b, pids)-pg0)/float64(b.N), "pg-cpu-ns/row")
		})
	}
}

// claimBatch is a batch of the table source before the cursor: claim,
// publish, mark the acked rows, commit.
func claimBatch(ctx context.Context, s *TableSource, conn *pgx.Conn) (int, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	rows, err := tx.Query(ctx, `SELECT id::text, kind, payload::text, created_at, ctid FROM effects
		WHERE published_at IS NULL AND status = 'pending' ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED`, s.cfg.BatchSize)
	if err != nil {
		return 0, err
	}
	var batch []claimedRow
	var ctids []pgtype.TID
	for rows.Next() {
		var r claimedRow
		var createdAt pgtype.Timestamptz
		var ctid pgtype.TID
		if err := rows.Scan(&r.id, &r.kind, &r.payload, &createdAt, &ctid); err != nil {
			return 0, err
		}
		r.createdAt, r.badCreatedAt = CarriedCreatedAt(createdAt)
		batch, ctids = append(batch, r), append(ctids, ctid)
	}
	if err := rows.Err(); err != nil || len(batch) == 0 {
		return 0, err
	}
	j := &job{rows: batch, done: make(chan struct{})}
	s.publishBatch(ctx, j)
	if j.err != nil {
		return 0, j.err
	}
	ids := make([]string, len(batch))
	for i, r := range batch {
		ids[i] = r.id
	}
	if _, err := tx.Exec(ctx, `UPDATE effects SET published_at = now() WHERE ctid = ANY(ARRAY(SELECT unnest($1::tid[]))) AND id = ANY($2::uuid[])`, ctids, ids); err != nil {
		return 0, err
	}
	return len(batch), tx.Commit(ctx)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU is the CPU time the PostgreSQL backends pids ran.
func backendCPU(b *testing.B, pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			b.Fatalf("backend CPU (the database must run on this machine): %v", err)
		}
		ns, err := strconv.ParseInt(strings.Fields(string(raw))[0], 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		sum += time.Duration(ns)
	}
	return sum
}

// BenchmarkTablePublishOnly: the publish step alone, without PostgreSQL:
// batches of 500 rows made in memory, published as one fast batch or
// message by message (PublishMsgAsync, then every PubAck awaited, as the
// batch does), an op a row, by one worker or two.
func BenchmarkTablePublishOnly(b *testing.B) {
	_, js := testenv.StartNATS(b).Connect(b)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	kind := "echo"
	// Warm up (the file store's first block): the first sub-benchmark
	// would pay for it.
	{
		s, err := NewTableSource(TableConfig{DatabaseURL: "postgres://unused"}, &pgxpool.Pool{}, js, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		s.fast.usable(context.Background())
		for range 10 {
			rows := make([]claimedRow, 500)
			for i := range rows {
				p := `{}`
				rows[i] = claimedRow{id: uuid(), kind: &kind, payload: &p, createdAt: time.Now()}
			}
			if _, rest := s.publishFast(context.Background(), rows, time.Now().Add(5*time.Second)); len(rest) != 0 {
				b.Fatal("warm-up: fast batch fell back")
			}
		}
		s.fast.close()
	}
	for _, workers := range []int{1, 2} {
		for _, mode := range []string{"fast", "per-message"} {
			b.Run(fmt.Sprintf("mode=%s/workers=%d", mode, workers), func(b *testing.B) {
				s, err := NewTableSource(TableConfig{DatabaseURL: "postgres://unused"}, &pgxpool.Pool{}, js, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				s.fast.usable(ctx)
				const batch = 500
				var next atomic.Int64
				b.ReportAllocs()
				cpu0 := cpuTime()
				b.ResetTimer()
				var wg sync.WaitGroup
				for range workers {
					wg.Go(func() {
						rows := make([]claimedRow, 0, batch)
						for {
							start := next.Add(batch) - batch
							if start >= int64(b.N) {
								return
							}
							rows = rows[:0]
							for i := start; i < min(start+batch, int64(b.N)); i++ {
								p := fmt.Sprintf(`{"to": "user%d@example.com", "subject": "hello", "n": %d}`, i, i)
								rows = append(rows, claimedRow{id: uuid(), kind: &kind, payload: &p, createdAt: time.Now()})
							}
							rest := rows
							if mode == "fast" {
								var done []pending
								done, rest = s.publishFast(ctx, rows, time.Now().Add(5*time.Second))
								if len(rows) >= fastBatchMin && len(done) != len(rows) {
									b.Errorf("fast batch: %d stored, %d left", len(done), len(rest))
									return
								}
							}
							futs := make([]pending, 0, len(rest))
							for _, r := range rest {
								p, err := s.publishRow(r)
								if err != nil {
									b.Error(err)
									return
								}
								futs = append(futs, p)
							}
							for _, p := range futs {
								select {
								case <-p.fut.Ok():
								case err := <-p.fut.Err():
									b.Error(err)
									return
								}
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/row")
				s.fast.close()
			})
		}
	}
}

func uuid() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
}
