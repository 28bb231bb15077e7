package faulttest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// EffectIDHeader is the header the http_request handler sends with the
// effect's id (pkg/effects/handlers).
const EffectIDHeader = "X-Effect-Id"

// TargetConfig says how a Target answers.
type TargetConfig struct {
	// Key names a top-level field of the request's JSON body whose value
	// (a string or a number) identifies the call instead of the
	// X-Effect-Id header. Empty: the header.
	Key string
	// Delay is how long each call takes before it is answered, so that
	// many handlers are in flight at once. Zero: answered at once.
	Delay time.Duration
	// Fail answers the first Fail calls of each key with 503 (and
	// RetryAfter when set) instead of doing the work, so that an effect
	// is still retrying while the test does something else.
	Fail int
	// RetryAfter is the Retry-After header (whole seconds) of those 503s.
	RetryAfter time.Duration
}

// Target is an HTTP server standing in for whatever an http_request effect
// calls. It counts, per key, the calls it answered 200 (the side effect was
// done) and the calls it refused; a key done more than once is an effect
// that ran twice.
type Target struct {
	// URL is the server's base URL (http://127.0.0.1:port).
	URL string

	cfg      TargetConfig
	srv      *httptest.Server
	mu       sync.Mutex
	done     map[string]int
	refused  map[string]int
	calls    atomic.Int64
	inFlight atomic.Int64
	noKey    atomic.Int64
}

// StartTarget starts a Target on a loopback port; it is closed when the test
// ends.
func StartTarget(t testing.TB, cfg TargetConfig) *Target {
	t.Helper()
	tg := &Target{cfg: cfg, done: map[string]int{}, refused: map[string]int{}}
	tg.srv = httptest.NewServer(http.HandlerFunc(tg.serve))
	tg.URL = tg.srv.URL
	t.Cleanup(tg.srv.Close)
	return tg
}

func (tg *Target) serve(w http.ResponseWriter, r *http.Request) {
	tg.calls.Add(1)
	tg.inFlight.Add(1)
	defer tg.inFlight.Add(-1)
	// The whole body is read first: only then does the server watch the
	// connection, so that a caller that goes away (a killed dispatcher)
	// ends the request's context and the work is not done.
	data, readErr := io.ReadAll(r.Body)
	key := r.Header.Get(EffectIDHeader)
	if tg.cfg.Key != "" {
		key = ""
		var body map[string]any
		if readErr == nil && json.Unmarshal(data, &body) == nil {
			switch v := body[tg.cfg.Key].(type) {
			case string:
				key = v
			case float64:
				key = strconv.FormatFloat(v, 'f', -1, 64)
			}
		}
	}
	if key == "" {
		tg.noKey.Add(1)
		http.Error(w, "no key", http.StatusBadRequest)
		return
	}
	if tg.cfg.Delay > 0 {
		select {
		case <-time.After(tg.cfg.Delay):
		case <-r.Context().Done():
			// The caller gave up (a killed dispatcher, a timeout): the
			// work was not done.
			return
		}
	}
	tg.mu.Lock()
	refuse := tg.refused[key] < tg.cfg.Fail
	if refuse {
		tg.refused[key]++
	} else {
		tg.done[key]++
	}
	tg.mu.Unlock()
	if refuse {
		if tg.cfg.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(tg.cfg.RetryAfter/time.Second)))
		}
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"ok":true}`)
}

// Done is how many times the work for key was done (answered 200).
func (tg *Target) Done(key string) int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.done[key]
}

// Refused is how many calls for key were answered 503 by TargetConfig.Fail.
func (tg *Target) Refused(key string) int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.refused[key]
}

// DoneCounts is a copy of the per-key counts of work done.
func (tg *Target) DoneCounts() map[string]int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	out := make(map[string]int, len(tg.done))
	for k, v := range tg.done {
		out[k] = v
	}
	return out
}

// Calls is how many requests arrived, refused and unanswered ones included.
func (tg *Target) Calls() int64 { return tg.calls.Load() }

// InFlight is how many requests are being answered now.
func (tg *Target) InFlight() int64 { return tg.inFlight.Load() }

// NoKey is how many requests carried no key (answered 400): a payload or
// handler that does not send what the test expects.
func (tg *Target) NoKey() int64 { return tg.noKey.Load() }
