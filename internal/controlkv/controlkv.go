// Package controlkv is the operator controls as the dispatchers read them:
// the JetStream key-value bucket EFFECTS_CONTROL, its keys and values, the
// dispatchers' watchers of it, and the wait for those watchers to confirm a
// change.
//
// PostgreSQL holds the truth (the paused-kinds table, the cancelled rows);
// this bucket is a copy the dispatchers can read without PostgreSQL. The
// writers are internal/control (the `effects` commands and the console,
// which write PostgreSQL first) and the completer, which re-creates the
// bucket and re-puts its content when it is missing or differs. See
// docs/architecture.md, "Controls".
//
// Keys:
//
//	paused.<kind>            the kind is paused; value: Mark (who, when)
//	cancelled.<kind>.<id>    the effect is cancelled; value: Mark
//	synced                   the bucket holds everything PostgreSQL holds;
//	                         written last when the bucket is filled again
//
// A dispatcher trusts the bucket only once it has read it to the end and
// found the synced key: a bucket being filled again after a loss is not
// mistaken for "nothing paused".
package controlkv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/effects-run/effects/pkg/effects"
)

// Bucket is the key-value bucket of the controls; Stream is its stream.
const (
	Bucket = "EFFECTS_CONTROL"
	Stream = "KV_" + Bucket
)

// Key prefixes and the synced key.
const (
	pausedPrefix    = "paused."
	cancelledPrefix = "cancelled."
	SyncedKey       = "synced"
)

// WatcherPrefix starts the name of every dispatcher's consumer of [Stream]
// (one per dispatcher process: the rest of the name is random). Only these
// consumers are waited for by [Confirm].
const WatcherPrefix = "dispatcher-"

// Timing of the watchers, which [Confirm]'s guarantee rests on (see
// docs/architecture.md, "Controls"):
const (
	// PollInterval: a dispatcher asks the server for its consumer's info
	// this often; each answer proves the consumer still existed when the
	// question was sent.
	PollInterval = time.Second
	// StaleAfter: a dispatcher starts no attempt when its last proof is
	// older than this (or it is disconnected, or its consumer is gone).
	StaleAfter = 5 * time.Second
	// WatcherPullExpiry: a dispatcher's pull requests on its consumer
	// expire after this and are sent again, so a live dispatcher is never
	// without one for long.
	WatcherPullExpiry = 10 * time.Second
	// WatcherInactiveThreshold: the server deletes a watcher that had no
	// pull request for this long (its dispatcher died or lost NATS). It is
	// well above StaleAfter, so a dispatcher whose consumer the server
	// removed stopped trusting it long before.
	WatcherInactiveThreshold = 30 * time.Second
)

// PausedKey is the key of a paused kind.
func PausedKey(kind string) string { return pausedPrefix + kind }

// CancelledKey is the key of a cancelled effect of kind.
func CancelledKey(kind, id string) string { return cancelledPrefix + kind + "." + id }

// KeyType is what a key says.
type KeyType int

const (
	Unknown KeyType = iota
	Paused
	Cancelled
	Synced
)

// Key is a parsed key.
type Key struct {
	Type KeyType
	Kind string // Paused, Cancelled
	ID   string // Cancelled
}

// ParseKey reads a key of the bucket; Unknown for anything else.
func ParseKey(key string) Key {
	switch {
	case key == SyncedKey:
		return Key{Type: Synced}
	case strings.HasPrefix(key, pausedPrefix):
		if kind := key[len(pausedPrefix):]; effects.ValidateKind(kind) == nil {
			return Key{Type: Paused, Kind: kind}
		}
	case strings.HasPrefix(key, cancelledPrefix):
		kind, id, ok := strings.Cut(key[len(cancelledPrefix):], ".")
		if ok && effects.ValidateKind(kind) == nil && effects.IsUUID(id) {
			return Key{Type: Cancelled, Kind: kind, ID: id}
		}
	}
	return Key{}
}

// Mark is the value of every key: who asked and when (the time PostgreSQL
// recorded). By is empty when nobody was named.
type Mark struct {
	By string    `json:"by,omitempty"`
	At time.Time `json:"at"`
}

// Encode is the value's bytes: equal marks encode equally (the time in UTC,
// to the microsecond PostgreSQL keeps), so the completer can compare them.
func (m Mark) Encode() []byte {
	m.At = m.At.UTC().Truncate(time.Microsecond)
	b, _ := json.Marshal(m) // a string and a time always encode
	return b
}

// DecodeMark reads a value; a value that is not a Mark is an error.
func DecodeMark(b []byte) (Mark, error) {
	var m Mark
	if err := json.Unmarshal(b, &m); err != nil {
		return Mark{}, fmt.Errorf("control value %.80q: %w", b, err)
	}
	return m, nil
}

// Config is the bucket's configuration: file storage and the streams'
// replicas (a copy that a restart of nats-server keeps), one value per key,
// and the streams' max age: a cancelled effect's key is needed only while
// JetStream may still deliver its effect, which it cannot after the
// effects stream's max age. Keys that must stay (paused kinds, synced) are
// written again by the completer well before they would expire.
func Config(o effects.StreamOptions) jetstream.KeyValueConfig {
	o = o.WithDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "effects operator controls (paused kinds, cancelled effects): a copy of PostgreSQL's, kept by the completer",
		History:     1,
		TTL:         o.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	}
}

// ErrNotConfirmed is wrapped by the error [Confirm] returns when some
// dispatchers did not confirm in time.
var ErrNotConfirmed = errors.New("not confirmed by every dispatcher")

// Confirmation is what [Confirm] found.
type Confirmation struct {
	// Confirmed counts the dispatchers that confirmed.
	Confirmed int `json:"confirmed"`
	// Waiting names the dispatchers that had not confirmed when the wait
	// ended (their consumers' descriptions).
	Waiting []string `json:"waiting,omitempty"`
}

// Confirm waits until every dispatcher watching the bucket has applied
// revision rev (and so every earlier one), or ctx ends. A dispatcher
// acknowledges a change on its consumer only after it applied it, so a
// consumer whose ack floor reached rev proves it. A consumer that vanishes
// without confirming (its dispatcher stopped or lost NATS, or the bucket
// was deleted) is waited for StaleAfter more: by then its dispatcher, no
// longer able to prove its consumer exists, has stopped trusting what it
// knew. For the same reason a bucket created less than StaleAfter ago is
// waited for until it is that old. A dispatcher that starts watching after
// rev was written reads it with the rest of the bucket before it trusts it.
//
// On ctx's end it returns the confirmation so far and an error wrapping
// [ErrNotConfirmed] (and ctx's error).
func Confirm(ctx context.Context, js jetstream.JetStream, rev uint64) (Confirmation, error) {
	var c Confirmation
	stream, err := js.Stream(ctx, Stream)
	if err != nil {
		return c, fmt.Errorf("bucket %s: %w", Bucket, err)
	}
	var notBefore time.Time
	if info := stream.CachedInfo(); !info.TimeStamp.IsZero() {
		if age := info.TimeStamp.Sub(info.Created); age < StaleAfter {
			notBefore = time.Now().Add(StaleAfter - age)
		}
	}
	waiting := map[string]string{} // name → description, not confirmed
	confirmed := map[string]bool{}
	wait := 10 * time.Millisecond
	for {
		seen := map[string]bool{}
		lister := stream.ListConsumers(ctx)
		for info := range lister.Info() {
			if !strings.HasPrefix(info.Name, WatcherPrefix) {
				continue
			}
			seen[info.Name] = true
			if info.AckFloor.Stream >= rev {
				confirmed[info.Name] = true
				delete(waiting, info.Name)
			} else if !confirmed[info.Name] {
				waiting[info.Name] = describe(info)
			}
		}
		if err := lister.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
			if ctx.Err() != nil {
				return c.finish(confirmed, waiting), fmt.Errorf("%w: %w", ErrNotConfirmed, ctx.Err())
			}
			return c.finish(confirmed, waiting), fmt.Errorf("list the watchers of bucket %s: %w", Bucket, err)
		}
		for name := range waiting {
			if !seen[name] {
				// Gone without confirming: its dispatcher stops trusting
				// its copy within StaleAfter of the consumer's end.
				delete(waiting, name)
				notBefore = later(notBefore, time.Now().Add(StaleAfter))
			}
		}
		if len(waiting) == 0 && !time.Now().Before(notBefore) {
			return c.finish(confirmed, waiting), nil
		}
		pause := wait
		if len(waiting) == 0 {
			pause = time.Until(notBefore)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return c.finish(confirmed, waiting), fmt.Errorf("%w: %w", ErrNotConfirmed, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

func (c Confirmation) finish(confirmed map[string]bool, waiting map[string]string) Confirmation {
	c.Confirmed = len(confirmed)
	c.Waiting = c.Waiting[:0]
	for _, d := range waiting {
		c.Waiting = append(c.Waiting, d)
	}
	sort.Strings(c.Waiting)
	return c
}

func describe(info *jetstream.ConsumerInfo) string {
	if info.Config.Description != "" {
		return info.Name + " (" + info.Config.Description + ")"
	}
	return info.Name
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Apply brings an existing bucket's max age and replicas to the streams'
// (`completer migrate streams`): a cancel must stay in the bucket as long
// as the effects stream may still deliver its effect. A missing bucket is
// left to the completer, which fills it from PostgreSQL.
func Apply(ctx context.Context, js jetstream.JetStream, o effects.StreamOptions) error {
	_, err := js.UpdateKeyValue(ctx, Config(o))
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bucket %s: %w", Bucket, err)
	}
	return nil
}
