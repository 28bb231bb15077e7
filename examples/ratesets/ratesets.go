// Package ratesets is the seed's publish_rateset effect as runnable code: a
// synchronous handler (PublishRateset) and an asynchronous one
// (StartRateset, the seed's Celery chained callback). Copy it as the start
// of your own handlers; examples/custom-dispatcher runs both.
//
// The Store stands in for your application's database and the upload for
// the work the effect does.
package ratesets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/effects-run/effects/pkg/effects"
)

// ErrNotFound is the store's answer for an unknown rateset.
var ErrNotFound = errors.New("rateset not found")

// RateSet is a rateset of the application.
type RateSet struct {
	ID     int64
	Status string
}

// Store is an in-memory rateset store, safe for concurrent use.
type Store struct {
	mu   sync.Mutex
	sets map[int64]*RateSet
	// Uploads counts uploads per rateset, to show what ran.
	uploads map[int64]int
}

// NewStore returns a store holding the ratesets ids, each "draft".
func NewStore(ids ...int64) *Store {
	s := &Store{sets: map[int64]*RateSet{}, uploads: map[int64]int{}}
	for _, id := range ids {
		s.sets[id] = &RateSet{ID: id, Status: "draft"}
	}
	return s
}

// RateSet returns a copy of the rateset id, or ErrNotFound.
func (s *Store) RateSet(_ context.Context, id int64) (RateSet, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, ok := s.sets[id]
	if !ok {
		return RateSet{}, fmt.Errorf("rateset %d: %w", id, ErrNotFound)
	}
	return *rs, nil
}

// SetStatus sets the status of the rateset id.
func (s *Store) SetStatus(_ context.Context, id int64, status string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs, ok := s.sets[id]
	if !ok {
		return fmt.Errorf("rateset %d: %w", id, ErrNotFound)
	}
	rs.Status = status
	return nil
}

// Upload is the effect's real work (an upload to S3 in the seed). It must
// honour ctx.
func (s *Store) Upload(ctx context.Context, id int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.uploads[id]++
	s.mu.Unlock()
	return s.SetStatus(ctx, id, "published")
}

// Uploads is how often rateset id was uploaded.
func (s *Store) Uploads(id int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uploads[id]
}

// payload is what a publish_rateset row carries: {"RATESET": 4512}.
type payload struct{ RATESET int64 }

func parse(e effects.Effect) (int64, error) {
	var p payload
	if err := json.Unmarshal(e.Payload, &p); err != nil || p.RATESET == 0 {
		return 0, effects.Permanent(fmt.Errorf("payload needs RATESET: %s", e.Payload))
	}
	return p.RATESET, nil
}

// PublishRateset returns the synchronous handler: do the work, return the
// completion or an error. Register it with
// reg.Handle("publish_rateset", ratesets.PublishRateset(store)).
func PublishRateset(store *Store) effects.HandlerFunc {
	return func(ctx context.Context, e effects.Effect) (any, error) {
		id, err := parse(e)
		if err != nil {
			return nil, err
		}
		if _, err := store.RateSet(ctx, id); errors.Is(err, ErrNotFound) {
			return nil, effects.Permanent(err) // fails now: retrying cannot help
		} else if err != nil {
			return nil, err // retried with backoff
		}
		if err := store.SetStatus(ctx, id, "publishing"); err != nil {
			return nil, err
		}
		if err := store.Upload(ctx, id); err != nil {
			return nil, err
		}
		return map[string]any{"rateset": id, "status": "published"}, nil
	}
}

// StartRateset returns the asynchronous handler: validate, start the work,
// return; the work completes the effect later through done. Register it
// with reg.HandleAsync("publish_rateset_async", ratesets.StartRateset(store)).
//
// Here the work runs in a goroutine; in an application it would more often
// be a job queue carrying done.Ref() (JSON), completed from another process
// with effects.NewClient(js).Complete(ctx, ref, result).
func StartRateset(store *Store) effects.AsyncHandlerFunc {
	return func(ctx context.Context, e effects.Effect, done effects.Done) error {
		id, err := parse(e)
		if err != nil {
			return err
		}
		if _, err := store.RateSet(ctx, id); errors.Is(err, ErrNotFound) {
			return effects.Permanent(err)
		} else if err != nil {
			return err
		}
		go func() {
			// Not the handler's ctx: it ends when the handler returns.
			ctx := context.Background()
			if err := store.Upload(ctx, id); err != nil {
				_ = done.Fail(ctx, err)
				return
			}
			_ = done.Complete(ctx, map[string]any{"rateset": id, "status": "published"})
		}()
		return nil // the row stays pending until done is called
	}
}
