package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// noopArgs are the jobs of the River contender: no-op jobs, as in River's
// own benchmark.
type noopArgs struct {
	Num int `json:"num"`
}

func (noopArgs) Kind() string { return "noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
}

func (noopWorker) Work(context.Context, *river.Job[noopArgs]) error { return nil }

// runRiver is `effects-bench river`: the River contender, in a process of
// its own. It migrates its database with rivermigrate, starts a client
// tuned like River's own benchmark (2,000 workers, 2 ms fetch cooldown),
// says "ready", then for each "phase <n> <rate>" line on stdin inserts n
// no-op jobs with InsertManyFast (COPY) in batches while the client works
// them, counts them as River reports them completed, and answers "done".
func runRiver(args []string) error {
	fs := flag.NewFlagSet("river", flag.ExitOnError)
	dbURL := fs.String("db", "", "PostgreSQL URL of River's own database")
	workers := fs.Int("workers", 2000, "MaxWorkers of the default queue")
	cooldown := fs.Duration("fetch-cooldown", 2*time.Millisecond, "FetchCooldown")
	batch := fs.Int("batch", 5000, "jobs per InsertManyFast (COPY) batch")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the start of the first phase to this file")
	profileFor := fs.Duration("profile-duration", 10*time.Second, "length of that profile")
	_ = fs.Parse(args)

	ctx := context.Background()
	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	driver := riverpgxv5.New(pool)
	migrator, err := rivermigrate.New(driver, nil)
	if err != nil {
		return err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("rivermigrate: %w", err)
	}
	workersReg := river.NewWorkers()
	river.AddWorker(workersReg, &noopWorker{})
	client, err := river.NewClient(driver, &river.Config{
		FetchCooldown: *cooldown,
		Queues:        map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: *workers}},
		Workers:       workersReg,
		Logger:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	completed, cancelSub := client.SubscribeConfig(&river.SubscribeConfig{ChanSize: 1 << 20, Kinds: []river.EventKind{river.EventKindJobCompleted}})
	defer cancelSub()
	if err := client.Start(ctx); err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Stop(sctx)
	}()

	insert := func(ctx context.Context, from, k int) error {
		params := make([]river.InsertManyParams, k)
		for i := range params {
			params[i] = river.InsertManyParams{Args: noopArgs{Num: from + i}}
		}
		_, err := client.InsertManyFast(ctx, params)
		return err
	}
	return serveChild("river", func(ctx context.Context, ph phase) (any, error) {
		if *cpuProfile != "" {
			stop, err := startCPUProfile(*cpuProfile, *profileFor)
			if err != nil {
				return nil, err
			}
			defer stop()
			*cpuProfile = ""
		}
		errc := make(chan error, 1)
		go func() { errc <- produce(ctx, ph, *batch, insert) }()
		var n int
		for n < ph.N {
			select {
			case <-completed:
				n++
			case err := <-errc:
				if err != nil {
					return nil, fmt.Errorf("inserting: %w", err)
				}
				errc = nil
			case <-ctx.Done():
				return nil, fmt.Errorf("%d of %d jobs completed: %w", n, ph.N, ctx.Err())
			}
		}
		return map[string]int{"completed": n}, nil
	})
}

// startCPUProfile profiles this process into path for d, or until stop is
// called if that comes first.
func startCPUProfile(path string, d time.Duration) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	}
	time.AfterFunc(d, stop)
	return stop, nil
}

// phase is one measured run of a child: N effects (or jobs), inserted as
// fast as possible when Rate is 0, else at Rate per second.
type phase struct {
	N    int     `json:"n"`
	Rate float64 `json:"rate"`
}

// serveChild speaks a child's side of the line protocol: "ready" once, then
// for each "phase {json}" on stdin runs run and answers "done {json}" (or
// "error <text>"). It returns at the end of stdin.
func serveChild(name string, run func(ctx context.Context, ph phase) (any, error)) error {
	fmt.Println("ready")
	in := newLineReader(os.Stdin)
	for {
		line, ok := in.next()
		if !ok {
			return nil
		}
		word, rest, _ := cutWord(line)
		if word != "phase" {
			return fmt.Errorf("%s: unknown command %q", name, line)
		}
		var ph phase
		if err := json.Unmarshal([]byte(rest), &ph); err != nil {
			return fmt.Errorf("%s: %q: %w", name, line, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), phaseTimeout(ph))
		res, err := run(ctx, ph)
		cancel()
		if err != nil {
			fmt.Printf("error %s\n", oneLine(err.Error()))
			return err
		}
		b, _ := json.Marshal(res)
		fmt.Printf("done %s\n", b)
	}
}

// phaseTimeout bounds a phase: generous, so that a slow machine finishes,
// yet a lost effect ends the run with an error instead of a hang.
func phaseTimeout(ph phase) time.Duration {
	d := 5 * time.Minute
	if ph.Rate > 0 {
		d += time.Duration(float64(ph.N)/ph.Rate*float64(time.Second)) * 2
	}
	// At least 1,000 effects/s on the slowest machine.
	return d + time.Duration(ph.N)*time.Millisecond
}

// produce inserts ph.N items by calling insert(ctx, from, k) with at most
// batch items at a time: back to back when ph.Rate is 0, else paced to
// ph.Rate per second (every 20 ms what is due, so the rate holds without
// drift).
func produce(ctx context.Context, ph phase, batch int, insert func(ctx context.Context, from, k int) error) error {
	if ph.Rate <= 0 {
		for i := 0; i < ph.N; i += batch {
			if err := insert(ctx, i, min(batch, ph.N-i)); err != nil {
				return err
			}
		}
		return nil
	}
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	sent := 0
	for sent < ph.N {
		due := min(ph.N, int(ph.Rate*time.Since(start).Seconds())+1)
		for sent < due {
			k := min(batch, due-sent)
			if err := insert(ctx, sent, k); err != nil {
				return err
			}
			sent += k
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}
