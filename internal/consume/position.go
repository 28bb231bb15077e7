package consume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PositionBucket is the JetStream key-value bucket in which every reader
// records its consumer's position (its ack floor), so that a process that
// finds its consumer missing at start can tell one that was lost while no
// process read it (created again after the recorded floor) from one that
// never existed (created where its configuration says). One key per
// consumer, [PositionKey]; created, with file storage, by the first reader
// that needs it.
const PositionBucket = "EFFECTS_CONSUMER_POSITIONS"

const (
	// defaultRecordEvery bounds how often a reader writes its position
	// (only when the ack floor moved, read every CheckEvery): what a
	// process that died acked since its last write runs again should its
	// consumer be lost before the next process starts. One small write to
	// a file-storage bucket per consumer and process every 2s at most.
	defaultRecordEvery = 2 * time.Second
	// positionTimeout bounds a read or write of the bucket: the watcher
	// that does them also notices a lost consumer.
	positionTimeout = 2 * time.Second
	// positionWarnEvery is how often a reader that cannot record its
	// position says so again.
	positionWarnEvery = time.Minute
)

// position is what PositionBucket holds for one consumer.
type position struct {
	// AckFloor is the stream sequence of the consumer's ack floor: every
	// message up to it was acked or terminated.
	AckFloor uint64 `json:"ack_floor"`
	// StreamCreated is the creation time of the stream the floor was read
	// on: a stream created again (same name) starts its sequences afresh.
	StreamCreated time.Time `json:"stream_created"`
	// ConsumerCreated is the creation time of the consumer the floor was
	// read on: a consumer created again (by a reader after a loss, or by an
	// operator who wants a replay) replaces the position of the one before,
	// even below it.
	ConsumerCreated time.Time `json:"consumer_created"`
	// Written is when a reader wrote it (for operators; not compared).
	Written time.Time `json:"written_at"`
}

// supersedes reports whether p is a later position than old: of a later
// stream, else of a later consumer, else a higher floor. Readers sharing a
// durable write the same key; a reader with a stale view never moves the
// position back.
func (p position) supersedes(old position) bool {
	switch {
	case !p.StreamCreated.Equal(old.StreamCreated):
		return p.StreamCreated.After(old.StreamCreated)
	case !p.ConsumerCreated.Equal(old.ConsumerCreated):
		return p.ConsumerCreated.After(old.ConsumerCreated)
	default:
		return p.AckFloor > old.AckFloor
	}
}

// same reports whether p and o are the same position (Written aside).
func (p position) same(o position) bool {
	return p.AckFloor == o.AckFloor && p.StreamCreated.Equal(o.StreamCreated) && p.ConsumerCreated.Equal(o.ConsumerCreated)
}

// PositionKey is the key of a consumer's position in [PositionBucket]:
// "<stream>.<consumer>", each name with every byte other than a letter, a
// digit, '-' or '_' written as "=XX" (hex), so that any name makes a valid
// key and two names never share one. Stream and consumer names never hold
// a '.'.
func PositionKey(stream, consumer string) string {
	return escapeKey(stream) + "." + escapeKey(consumer)
}

func escapeKey(s string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	return b.String()
}

// recordState is what a reader found in PositionBucket for its consumer.
type recordState int

const (
	notRecorded   recordState = iota // no key: the consumer never existed (or its key was deleted on purpose)
	recorded                         // a position
	bucketMissing                    // no bucket (deleted, or never created): nothing to tell
	unreadable                       // a value that is not a position
)

// positions is one reader's key in PositionBucket. Its methods are called
// by one goroutine at a time (Open, then the watcher, then Release).
type positions struct {
	js       jetstream.JetStream
	key      string
	replicas int
	every    time.Duration
	log      *slog.Logger
	m        *series

	mu sync.Mutex
	kv jetstream.KeyValue
	// hadBucket: the bucket was seen (or created) by this reader, so that
	// finding it gone later is told as such.
	hadBucket bool
	// rev is the key's revision as last read or written here; 0 unknown.
	rev uint64
	// saved is the position last recorded (here, or found recorded by
	// another process at or beyond it); savedAt when that was tried.
	saved   position
	savedAt time.Time
	// failingSince is when recording started failing; zero while it works.
	failingSince time.Time
	warnedAt     time.Time
}

// bucket returns the bucket, creating it when it does not exist; created
// reports that it did not (nothing is recorded in it yet).
func (p *positions) bucket(ctx context.Context) (kv jetstream.KeyValue, created bool, err error) {
	if p.kv != nil {
		return p.kv, false, nil
	}
	kv, created, err = positionBucket(ctx, p.js, p.replicas)
	if err != nil {
		return nil, false, err
	}
	if created {
		if p.hadBucket {
			p.log.Warn("the position bucket "+PositionBucket+" was gone (deleted?); created it again: positions are recorded again from now",
				"bucket", PositionBucket)
		} else {
			p.log.Info("created the position bucket "+PositionBucket, "bucket", PositionBucket, "replicas", max(p.replicas, 1))
		}
		p.rev = 0
	}
	p.kv, p.hadBucket = kv, true
	return kv, created, nil
}

// positionBucket finds or creates PositionBucket; created reports that it
// did not exist.
func positionBucket(ctx context.Context, js jetstream.JetStream, replicas int) (kv jetstream.KeyValue, created bool, err error) {
	kv, err = js.KeyValue(ctx, PositionBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      PositionBucket,
			Description: "effects: the last recorded ack floor of each durable consumer, to resume one lost while no process read it",
			History:     1,
			// File storage: the bucket must outlive a restart of the
			// NATS server (a memory bucket is empty after one), one of
			// the ways a consumer is lost while nobody reads it.
			Storage:  jetstream.FileStorage,
			Replicas: max(replicas, 1),
		})
		created = err == nil
		if errors.Is(err, jetstream.ErrBucketExists) { // another process created it meanwhile
			kv, err = js.KeyValue(ctx, PositionBucket)
		}
	}
	if err != nil {
		return nil, false, fmt.Errorf("position bucket %s: %w", PositionBucket, err)
	}
	return kv, created, nil
}

// CreatePositionBucket creates [PositionBucket] with replicas unless it
// exists. Whoever creates the streams calls it (effects.EnsureStreams and
// ApplyStreams, when they created the effects stream), so that on a new
// deployment the bucket exists before the first message. Otherwise readers
// create it when they need it: then a reader that finds it missing while
// its consumer is missing too knows that it cannot tell a lost consumer
// from a new one, and says so.
func CreatePositionBucket(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, _, err := positionBucket(ctx, js, replicas)
	return err
}

// SetPositionBucketReplicas gives [PositionBucket], when it exists, that
// many replicas (`completer migrate` does, as for the streams).
func SetPositionBucketReplicas(ctx context.Context, js jetstream.JetStream, replicas int) error {
	s, err := js.Stream(ctx, "KV_"+PositionBucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("position bucket %s: %w", PositionBucket, err)
	}
	cfg := s.CachedInfo().Config
	if cfg.Replicas == max(replicas, 1) {
		return nil
	}
	cfg.Replicas = max(replicas, 1)
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("position bucket %s: replicas: %w", PositionBucket, err)
	}
	return nil
}

// bucketGone reports an error of an operation on the bucket that may mean
// it no longer exists (the next operation looks it up again).
func bucketGone(err error) bool {
	return errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// load reads the consumer's recorded position.
func (p *positions) load(ctx context.Context) (position, recordState, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, positionTimeout)
	defer cancel()
	for range 2 {
		kv, created, err := p.bucket(ctx)
		if err != nil {
			return position{}, 0, err
		}
		if created {
			return position{}, bucketMissing, nil
		}
		e, err := kv.Get(ctx, p.key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return position{}, notRecorded, nil
		case bucketGone(err):
			p.kv = nil // look it up again
			continue
		case err != nil:
			return position{}, 0, fmt.Errorf("position %s in bucket %s: %w", p.key, PositionBucket, err)
		}
		p.rev = e.Revision()
		var pos position
		if err := json.Unmarshal(e.Value(), &pos); err != nil {
			p.log.Warn("the recorded position is not one; ignored", "bucket", PositionBucket, "key", p.key, "error", err)
			return position{}, unreadable, nil
		}
		p.saved = pos
		return pos, recorded, nil
	}
	return position{}, 0, fmt.Errorf("position %s: bucket %s gone and created again meanwhile", p.key, PositionBucket)
}

// record writes pos unless it is what was last recorded, or (unless force)
// the last write was less than every ago. A failure is logged and counted,
// never returned: consuming goes on without it.
func (p *positions) record(ctx context.Context, pos position, force bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if pos.same(p.saved) || (!force && now.Sub(p.savedAt) < p.every) {
		return
	}
	p.savedAt = now
	ctx, cancel := context.WithTimeout(ctx, positionTimeout)
	defer cancel()
	pos.Written = now
	err := p.save(ctx, pos)
	if err == nil {
		if !p.failingSince.IsZero() {
			p.log.Info("recording the consumer's position again", "bucket", PositionBucket, "failed_for", now.Sub(p.failingSince).Round(time.Millisecond).String())
			p.failingSince = time.Time{}
		}
		p.m.positionUp(true)
		return
	}
	p.m.positionUp(false)
	if p.failingSince.IsZero() {
		p.failingSince = now
	}
	if now.Sub(p.warnedAt) >= positionWarnEvery {
		p.warnedAt = now
		p.log.Warn("cannot record the consumer's position; consuming goes on, but should the consumer be lost while no process reads it, the next process would create it where its configuration says (DeliverAll: the stream again)",
			"bucket", PositionBucket, "key", p.key, "error", err, "failing_for", now.Sub(p.failingSince).Round(time.Millisecond).String())
	}
}

// save is a compare-and-set of the key, to a later position only: another
// process sharing the durable may have written one already.
func (p *positions) save(ctx context.Context, pos position) error {
	val, err := json.Marshal(pos)
	if err != nil {
		return err
	}
	for range 4 {
		kv, _, err := p.bucket(ctx)
		if err != nil {
			return err
		}
		var rev uint64
		if p.rev == 0 {
			rev, err = kv.Create(ctx, p.key, val)
		} else {
			rev, err = kv.Update(ctx, p.key, val, p.rev)
		}
		switch {
		case err == nil:
			p.rev, p.saved = rev, pos
			return nil
		case errors.Is(err, jetstream.ErrKeyExists): // written meanwhile: read it
			e, err := kv.Get(ctx, p.key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				p.rev = 0
				continue
			}
			if err != nil {
				return err
			}
			p.rev = e.Revision()
			var stored position
			if json.Unmarshal(e.Value(), &stored) == nil && !pos.supersedes(stored) {
				p.saved = pos // recorded as far already
				return nil
			}
		case bucketGone(err):
			p.kv = nil
		default:
			return err
		}
	}
	return fmt.Errorf("position %s: the key or the bucket changed under every write", p.key)
}
