package dispatcher

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
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
type rateLimiter struct {
	kv       jetstream.KeyValue
	key      string
	interval time.Duration
	local    sync.Mutex
}

func newRateLimiter(kv jetstream.KeyValue, kind string, interval time.Duration) *rateLimiter {
	return &rateLimiter{kv: kv, key: kind, interval: interval}
}

// wait blocks until an attempt may start, or ctx ends.
func (l *rateLimiter) wait(ctx context.Context) error {
	l.local.Lock()
	defer l.local.Unlock()
	for {
		var tat time.Time
		var rev uint64
		e, err := l.kv.Get(ctx, l.key)
		switch {
		case err == nil:
			rev = e.Revision()
			if v := e.Value(); len(v) == 8 {
				tat = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
			}
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			// NATS is unreachable: wait a little and try again; the
			// message is kept alive meanwhile.
			if err := sleep(ctx, l.interval); err != nil {
				return err
			}
			continue
		}
		now := time.Now()
		if wait := tat.Sub(now); wait > 0 {
			if err := sleep(ctx, wait); err != nil {
				return err
			}
			continue
		}
		next := make([]byte, 8)
		binary.BigEndian.PutUint64(next, uint64(now.Add(l.interval).UnixNano()))
		if rev == 0 {
			_, err = l.kv.Create(ctx, l.key, next)
		} else {
			_, err = l.kv.Update(ctx, l.key, next, rev)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		// Another process took the slot (wrong last sequence / key exists),
		// or the write failed: read again.
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// rateBucket finds or creates the rate-limit bucket. It never changes an
// existing bucket's configuration.
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
