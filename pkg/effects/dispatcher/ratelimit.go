package dispatcher

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/effects-run/effects/internal/retry"
)

// RateBucket is the JetStream key-value bucket that holds every kind's
// rate-limit state, shared by all dispatcher processes.
const RateBucket = "EFFECTS_RATE"

// rateLimiter spaces the attempts of one kind across every dispatcher
// process: a GCRA ("virtual scheduling") whose one number, the theoretical
// arrival time (TAT) of the next attempt, lives in the key <kind> of
// RateBucket. Taking a slot is a compare-and-set on the key's revision:
//
//	read TAT (and revision); now := clock
//	if TAT > now: sleep until TAT, read again
//	else write max(TAT, now) + interval, expecting that revision
//	     (someone else wrote first: read again)
//
// so attempts start at least one interval apart whichever process runs
// them: at most N per period for a rate of N per period, in any window.
// Within a process one worker at a time contends for the key, so the KV
// sees at most one writer per process.
//
// The state is soft: lost (a nats-server restart empties the memory
// bucket, an operator deletes it or the key), the schedule starts again
// from now, which lets at most one attempt start up to an interval early.
// So a lost bucket is created again (rateStore) and the kind goes on; what
// must never happen is a kind that waits for a state it cannot read
// without saying so: while reading or writing fails, the limiter retries
// with backoff, logs, sets effects_dispatcher_rate_limit_up to 0, and the
// dispatcher is not ready, naming the kind.
type rateLimiter struct {
	store    *rateStore
	key      string
	interval time.Duration
	logger   *slog.Logger
	up       prometheus.Gauge
	local    sync.Mutex
	// failing is the error of the limiter's last try while its state
	// cannot be read or written; nil while it can.
	failing    atomic.Pointer[error]
	failingAt  time.Time // first failure of the current run (under local)
	lastWarned time.Time // (under local)
}

// ratePolicy is the backoff while a kind's state cannot be read or written.
var ratePolicy = retry.Policy{Min: 50 * time.Millisecond, Max: 2 * time.Second}

// rateWarnEvery is how often a limiter that keeps failing says so again.
const rateWarnEvery = 30 * time.Second

func newRateLimiter(store *rateStore, kind string, interval time.Duration, logger *slog.Logger, up prometheus.Gauge) *rateLimiter {
	up.Set(1)
	return &rateLimiter{store: store, key: kind, interval: interval, logger: logger, up: up}
}

// wait blocks until an attempt may start, or ctx ends.
func (l *rateLimiter) wait(ctx context.Context) error {
	l.local.Lock()
	defer l.local.Unlock()
	if _, ok := retry.Until(ctx, ratePolicy, l.take, l.failed); !ok {
		return context.Cause(ctx)
	}
	if l.failing.Load() != nil {
		l.failing.Store(nil)
		l.up.Set(1)
		l.logger.Info("rate limit state readable again; the kind's effects run", "kind", l.key, "bucket", RateBucket,
			"stalled_for", time.Since(l.failingAt))
	}
	return nil
}

// take takes the next slot: nil once it is this process's, an error when
// the state could not be read or written (a lost bucket is created again
// first, and that is no error).
func (l *rateLimiter) take(ctx context.Context) error {
	for {
		kv := l.store.bucket()
		var tat time.Time
		var rev uint64
		e, err := kv.Get(ctx, l.key)
		switch {
		case err == nil:
			rev = e.Revision()
			if v := e.Value(); len(v) == 8 {
				tat = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
			}
		case errors.Is(err, jetstream.ErrKeyNotFound):
			// No schedule yet (or the key was deleted): Create starts one.
		default:
			if ctx.Err() != nil {
				return err
			}
			if again, rerr := l.store.recreate(ctx, kv); again {
				continue
			} else if rerr != nil {
				err = fmt.Errorf("%w (and looking for the bucket: %w)", err, rerr)
			}
			return fmt.Errorf("read: %w", err)
		}
		now := time.Now()
		if wait := tat.Sub(now); wait > 0 {
			if err := retry.Sleep(ctx, wait); err != nil {
				return err
			}
			continue
		}
		next := make([]byte, 8)
		binary.BigEndian.PutUint64(next, uint64(now.Add(l.interval).UnixNano()))
		if rev == 0 {
			_, err = kv.Create(ctx, l.key, next)
		} else {
			_, err = kv.Update(ctx, l.key, next, rev)
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, jetstream.ErrKeyExists):
			continue // another process took the slot: read again
		case ctx.Err() != nil:
			return err
		}
		if again, _ := l.store.recreate(ctx, kv); again {
			continue
		}
		return fmt.Errorf("write: %w", err)
	}
}

// failed records a try that could not read or write the state: not ready,
// the gauge at 0, and a warning when the kind starts waiting (and every
// rateWarnEvery while it goes on).
func (l *rateLimiter) failed(err error, n int, wait time.Duration) {
	now := time.Now()
	first := l.failing.Load() == nil
	if first {
		l.failingAt = now
	}
	l.failing.Store(&err)
	l.up.Set(0)
	if first || now.Sub(l.lastWarned) >= rateWarnEvery {
		l.lastWarned = now
		l.logger.Warn("rate limit state cannot be read or written; the kind's effects wait until it can (not ready meanwhile)",
			"kind", l.key, "bucket", RateBucket, "attempt", n, "error", err, "retry_in", wait, "stalled_for", now.Sub(l.failingAt))
	}
}

// health is nil unless the kind waits for a state it cannot read or write.
func (l *rateLimiter) health() error {
	if err := l.failing.Load(); err != nil {
		return fmt.Errorf("its rate limit state in bucket %s cannot be read or written: %w", RateBucket, *err)
	}
	return nil
}

// rateStore is the rate-limit bucket as this process sees it, shared by
// the kinds' limiters. It is created when missing (at start, and whenever
// an operation on it fails because it is gone), never reconfigured.
type rateStore struct {
	js       jetstream.JetStream
	replicas int
	logger   *slog.Logger
	created  prometheus.Counter

	mu sync.Mutex
	kv jetstream.KeyValue
}

// open finds or creates the bucket, retrying until it works or ctx ends.
func (s *rateStore) open(ctx context.Context) bool {
	_, ok := retry.Until(ctx, retry.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second},
		func(ctx context.Context) error {
			kv, err := rateBucket(ctx, s.js, s.replicas)
			if err == nil {
				s.mu.Lock()
				s.kv = kv
				s.mu.Unlock()
			}
			return err
		},
		func(err error, n int, wait time.Duration) {
			s.logger.Warn("opening the rate-limit bucket; retrying", "bucket", RateBucket, "attempt", n, "error", err, "retry_in", wait)
		})
	return ok
}

func (s *rateStore) bucket() jetstream.KeyValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kv
}

// recreate answers an operation on seen that failed: when the bucket is
// gone it creates it again and reports true (try again at once); so it does
// when another limiter has already done so since seen was taken. False
// when the bucket is there (the failure has another cause) or cannot be
// looked up; err then says why it could not be looked up or created.
func (s *rateStore) recreate(ctx context.Context, seen jetstream.KeyValue) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.kv != seen {
		return true, nil
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := s.js.KeyValue(lctx, RateBucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return false, err
	}
	kv, err := rateBucket(lctx, s.js, s.replicas)
	if err != nil {
		return false, err
	}
	s.kv = kv
	s.created.Inc()
	s.logger.Warn("rate-limit bucket "+RateBucket+" was gone; created it again (a nats-server restart empties it, or it was deleted): the limits start again from now",
		"bucket", RateBucket)
	return true, nil
}

// rateBucket finds or creates the rate-limit bucket. It never changes an
// existing bucket's configuration.
//
// Memory storage: the state is one time per kind, rewritten by every
// attempt of a limited kind, and worth one interval; losing it lets at most
// one attempt start early. A file-backed bucket would survive a restart of
// the nats-server, at the price of a write to disk per attempt, and would
// still vanish when deleted, so the re-creation is needed either way.
func rateBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, RateBucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("rate-limit bucket %s: %w", RateBucket, err)
	}
	kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      RateBucket,
		Description: "effects dispatcher: per-kind rate limits shared by all dispatchers",
		History:     1,
		Storage:     jetstream.MemoryStorage,
		Replicas:    max(replicas, 1),
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.KeyValue(ctx, RateBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("rate-limit bucket %s: %w", RateBucket, err)
	}
	return kv, nil
}
