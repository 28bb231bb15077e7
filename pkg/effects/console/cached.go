package console

import (
	"context"
	"sync"
	"time"
)

// cached is a value computed at most once per ttl however many viewers
// ask: the counts of /kinds cost a query per status, and every open page
// refreshes them. Callers that arrive while it is computed wait for that
// computation.
type cached[T any] struct {
	ttl  time.Duration
	load func(context.Context) (T, error)
	now  func() time.Time

	mu  sync.Mutex
	at  time.Time
	val T
	err error
}

func newCached[T any](ttl time.Duration, load func(context.Context) (T, error)) *cached[T] {
	return &cached[T]{ttl: ttl, load: load, now: time.Now}
}

// get returns the value, computing it when older than ttl. A failure is
// not kept: the next caller tries again.
func (c *cached[T]) get(ctx context.Context) (T, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && c.now().Sub(c.at) < c.ttl {
		return c.val, c.err
	}
	v, err := c.load(ctx)
	if err != nil {
		var zero T
		return zero, err
	}
	c.val, c.err, c.at = v, nil, c.now()
	return v, nil
}

// forget drops the value, so that the next get computes it (after an
// action that changed it).
func (c *cached[T]) forget() {
	c.mu.Lock()
	c.at = time.Time{}
	c.mu.Unlock()
}
