// Package admin serves a service's operational endpoints: /metrics,
// /healthz (the process is alive) and /readyz (its dependencies answer).
package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go and process collectors, the
// one every service registers its own metrics on.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Check reports whether one dependency is usable.
type Check func(ctx context.Context) error

// Checks is the set of readiness checks, added to while a service starts.
type Checks struct {
	mu     sync.Mutex
	checks map[string]Check
}

// Add registers a named check.
func (c *Checks) Add(name string, check Check) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checks == nil {
		c.checks = make(map[string]Check)
	}
	c.checks[name] = check
}

// Run runs every check and returns the failures by name. With no checks
// registered yet the service is still starting, which is a failure too.
func (c *Checks) Run(ctx context.Context) map[string]string {
	c.mu.Lock()
	if len(c.checks) == 0 {
		c.mu.Unlock()
		return map[string]string{"starting": "no dependency checked yet"}
	}
	checks := make(map[string]Check, len(c.checks))
	for k, v := range c.checks {
		checks[k] = v
	}
	c.mu.Unlock()
	failed := map[string]string{}
	for name, check := range checks {
		if err := check(ctx); err != nil {
			failed[name] = err.Error()
		}
	}
	return failed
}

// Handler serves /metrics from reg, /healthz and /readyz from checks.
func Handler(reg *prometheus.Registry, checks *Checks) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if failed := checks.Run(ctx); len(failed) > 0 {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "failed": failed})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready"})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// WithPprof serves Go's profiles under /debug/pprof/ (the index, cmdline,
// profile, symbol, trace and the named profiles: heap, allocs, goroutine,
// mutex, block, threadcreate) and everything else from h. Services mount it
// only with EFFECTS_PPROF=1, e.g. for
// `go tool pprof http://127.0.0.1:9091/debug/pprof/profile?seconds=30`.
func WithPprof(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.Handle("/", h)
	return mux
}
