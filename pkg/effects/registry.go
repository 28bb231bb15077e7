package effects

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// HandlerFunc handles an effect synchronously: its return value, marshalled
// to JSON, becomes the row's completion; an error is retried (see
// [Permanent] and [RetryAfter]). It must honour ctx: the context ends when the
// handler timeout passes or the dispatcher shuts down.
type HandlerFunc func(ctx context.Context, e Effect) (any, error)

// AsyncHandlerFunc starts the work for an effect and returns at once; the
// completion is published later through done, from any goroutine, or from
// another process through [Client] with e.Ref(). A nil error means "started":
// the effect stays pending until done is called. An error is treated as for a
// [HandlerFunc] and done must then not be used.
type AsyncHandlerFunc func(ctx context.Context, e Effect, done Done) error

// Done completes one effect later; it is what an [AsyncHandlerFunc] is given.
type Done interface {
	// Complete records success with result (any JSON-marshalable value) as
	// the completion.
	Complete(ctx context.Context, result any) error
	// Fail records a final failure with err's text.
	Fail(ctx context.Context, err error) error
	// Ref names the effect, for handing to another process.
	Ref() Ref
}

// Handler is a registered handler: exactly one of its functions is set.
type Handler struct {
	kind  string
	sync  HandlerFunc
	async AsyncHandlerFunc
	opts  KindOptions
}

// Options are the kind's limits set at registration.
func (h *Handler) Options() KindOptions { return h.opts }

// Kind is the kind the handler was registered for.
func (h *Handler) Kind() string { return h.kind }

// IsAsync reports whether the handler completes later.
func (h *Handler) IsAsync() bool { return h.async != nil }

// Call runs the handler. For an async handler that started its work it returns
// deferred=true and no result.
func (h *Handler) Call(ctx context.Context, e Effect, done Done) (result any, deferred bool, err error) {
	if h.async != nil {
		if err := h.async(ctx, e, done); err != nil {
			return nil, false, err
		}
		return nil, true, nil
	}
	result, err = h.sync(ctx, e)
	return result, false, err
}

// Registry maps kinds to handlers. The zero value is not usable; create one
// with [NewRegistry]. It is safe for concurrent use.
type Registry struct {
	mu       sync.RWMutex
	handlers map[string]*Handler
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{handlers: make(map[string]*Handler)}
}

// Handle registers a synchronous handler for kind. Like http.ServeMux.Handle
// it panics on a programming error: an invalid kind, a nil handler, or a kind
// registered twice. Use [Registry.Register] to get an error instead.
// opts set the kind's limits ([Concurrency], [RateLimit], ...).
func (r *Registry) Handle(kind string, h HandlerFunc, opts ...HandlerOption) {
	if err := r.Register(kind, h, opts...); err != nil {
		panic(err)
	}
}

// HandleAsync registers an asynchronous handler for kind; it panics like
// [Registry.Handle].
func (r *Registry) HandleAsync(kind string, h AsyncHandlerFunc, opts ...HandlerOption) {
	if err := r.RegisterAsync(kind, h, opts...); err != nil {
		panic(err)
	}
}

// Register registers a synchronous handler for kind.
func (r *Registry) Register(kind string, h HandlerFunc, opts ...HandlerOption) error {
	if h == nil {
		return fmt.Errorf("effects: nil handler for kind %q", kind)
	}
	return r.add(&Handler{kind: kind, sync: h}, opts)
}

// RegisterAsync registers an asynchronous handler for kind.
func (r *Registry) RegisterAsync(kind string, h AsyncHandlerFunc, opts ...HandlerOption) error {
	if h == nil {
		return fmt.Errorf("effects: nil handler for kind %q", kind)
	}
	return r.add(&Handler{kind: kind, async: h}, opts)
}

func (r *Registry) add(h *Handler, opts []HandlerOption) error {
	if err := ValidateKind(h.kind); err != nil {
		return fmt.Errorf("effects: register: %w", err)
	}
	for _, o := range opts {
		o(&h.opts)
	}
	if err := h.opts.Validate(); err != nil {
		return fmt.Errorf("effects: register %q: %w", h.kind, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.handlers[h.kind]; dup {
		return fmt.Errorf("effects: a handler for kind %q is already registered", h.kind)
	}
	r.handlers[h.kind] = h
	return nil
}

// Lookup returns the handler registered for kind.
func (r *Registry) Lookup(kind string) (*Handler, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	h, ok := r.handlers[kind]
	return h, ok
}

// Kinds returns the registered kinds in sorted order.
func (r *Registry) Kinds() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	kinds := make([]string, 0, len(r.handlers))
	for k := range r.handlers {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	return kinds
}
