package ingest

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// BenchmarkTablePublish: the table source's batches (claim, publish, wait
// for the acks, mark, commit) of 500 rows, an op a row, published as fast
// batches or message by message (EFFECTS_TABLE_FAST_BATCH=false: the path
// before fast batches), by one worker or two. cpu-ns/row is the process's
// CPU time (the client and the embedded NATS server, not PostgreSQL's)
// per row; allocs likewise count both. Compare the modes each in a process
// of its own (-bench 'BenchmarkTablePublish$/mode=fast/workers=1', then
// per-message, alternated): in one process the sub-benchmark that runs
// first pays more, warm-up or not.
func BenchmarkTablePublish(b *testing.B) {
	pg := testenv.StartEffectsTable(b, 0)
	_, js := testenv.StartNATS(b).Connect(b)
	if err := effects.EnsureStreams(context.Background(), js, effects.StreamOptions{}); err != nil {
		b.Fatal(err)
	}
	// Warm up (the file store's first block, PostgreSQL's plans): the
	// first sub-benchmark would pay for it.
	for _, off := range []bool{false, true} {
		s, err := NewTableSource(TableConfig{DatabaseURL: pg.URL, NoFastBatch: off}, pg.Pool, js, nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		s.fast.usable(ctx)
		if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects (kind, payload) SELECT 'echo', '{}' FROM generate_series(1, 5000)`); err != nil {
			b.Fatal(err)
		}
		for {
			n, err := s.batch(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
		s.fast.close()
	}
	for _, workers := range []int{1, 2} {
		for _, mode := range []struct {
			name string
			off  bool
		}{{"fast", false}, {"per-message", true}} {
			b.Run(fmt.Sprintf("mode=%s/workers=%d", mode.name, workers), func(b *testing.B) {
				s, err := NewTableSource(TableConfig{DatabaseURL: pg.URL, NoFastBatch: mode.off}, pg.Pool, js, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				s.fast.usable(ctx)
				if _, err := pg.Pool.Exec(ctx, `INSERT INTO effects (kind, payload)
					SELECT 'echo', jsonb_build_object('to', 'user' || g || '@example.com', 'subject', 'hello', 'n', g)
					FROM generate_series(1, $1::int) g`, b.N); err != nil {
					b.Fatal(err)
				}
				if _, err := pg.Pool.Exec(ctx, `ANALYZE effects`); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				cpu0 := cpuTime()
				b.ResetTimer()
				var wg sync.WaitGroup
				for range workers {
					wg.Go(func() {
						for {
							n, err := s.batch(ctx)
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
				b.StopTimer()
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/row")
				if s.fast.b != nil {
					s.fast.close()
				}
			})
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
