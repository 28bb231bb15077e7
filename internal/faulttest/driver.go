package faulttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// SecretHeader is the ingest's secret header (internal/ingest.SecretHeader).
const SecretHeader = "X-Effects-Secret"

// Driver posts event-trigger bodies to the ingest the way Hasura does: one
// event id per event, kept across retries; a 5xx or a connection error is
// retried, after the reply's Retry-After when it has one (Hasura honours it
// even when its own retries are spent), else after Interval; any other
// reply ends the delivery.
type Driver struct {
	// URL is the webhook (http://host:port/hasura/events).
	URL string
	// Secret goes in X-Effects-Secret.
	Secret string
	// Interval is the wait before a retry without Retry-After (Hasura's
	// retry_conf.interval_sec, 10s by default; short in tests).
	Interval time.Duration
	// Client sends the requests. Default: a client with a 30s timeout
	// (Hasura's timeout_sec is 60).
	Client *http.Client

	stats DriverStats
}

// DriverStats counts what a Driver saw.
type DriverStats struct {
	Posts, OK, Unavailable, ServerErrors, ConnErrors, Other atomic.Int64
	// RetryAfterHonoured counts retries that waited a reply's Retry-After.
	RetryAfterHonoured atomic.Int64
}

// Stats are the driver's counters.
func (d *Driver) Stats() *DriverStats { return &d.stats }

func (d *Driver) client() *http.Client {
	if d.Client != nil {
		return d.Client
	}
	return defaultClient
}

var defaultClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256},
}

// Event is one event-trigger body and its event id.
type Event struct {
	ID   string
	Body []byte
}

// NewEventID returns a random UUID, as Hasura gives each event.
func NewEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// NewEvent builds Hasura's v2 event-trigger body for op (INSERT, MANUAL,
// UPDATE, DELETE) on row, the table row as row_to_json writes it, with a new
// event id.
func NewEvent(op string, row json.RawMessage) Event {
	id := NewEventID()
	newRow, oldRow := row, json.RawMessage("null")
	if op == "DELETE" {
		newRow, oldRow = json.RawMessage("null"), row
	}
	role := "user"
	if op == "MANUAL" {
		role = "admin" // the console's invoke
	}
	body, _ := json.Marshal(map[string]any{
		"id":         id,
		"created_at": time.Now().UTC().Format("2006-01-02T15:04:05.999999"),
		"trigger":    map[string]any{"name": "effects_dispatch"},
		"table":      map[string]any{"schema": "public", "name": "effects"},
		"event": map[string]any{
			"op":                op,
			"session_variables": map[string]string{"x-hasura-role": role},
			"trace_context":     nil,
			"data":              map[string]any{"old": oldRow, "new": newRow},
		},
		"delivery_info": map[string]any{"current_retry": 0, "max_retries": 5},
	})
	return Event{ID: id, Body: body}
}

// Deliver posts ev until the ingest takes it (200) or refuses it for good
// (a 4xx), retrying as Hasura does until ctx ends. It returns the final
// status code.
func (d *Driver) Deliver(ctx context.Context, ev Event) (int, error) {
	for try := 0; ; try++ {
		code, retryAfter, err := d.post(ctx, ev, try)
		switch {
		case err != nil:
			d.stats.ConnErrors.Add(1)
		case code == http.StatusOK:
			d.stats.OK.Add(1)
			return code, nil
		case code == http.StatusServiceUnavailable:
			d.stats.Unavailable.Add(1)
		case code >= 500:
			d.stats.ServerErrors.Add(1)
		default:
			d.stats.Other.Add(1)
			return code, nil
		}
		wait := d.Interval
		if retryAfter > 0 {
			wait = retryAfter
			d.stats.RetryAfterHonoured.Add(1)
		}
		select {
		case <-ctx.Done():
			return code, fmt.Errorf("faulttest: event %s not taken (last: %d, %v): %w", ev.ID, code, err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

func (d *Driver) post(ctx context.Context, ev Event, try int) (int, time.Duration, error) {
	d.stats.Posts.Add(1)
	body := ev.Body
	if try > 0 {
		// Hasura counts its retries in delivery_info.current_retry.
		body = bytes.Replace(body, []byte(`"current_retry":0`), []byte(`"current_retry":`+strconv.Itoa(try)), 1)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.URL, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "hasura-graphql-engine/v2.40.0")
	if d.Secret != "" {
		req.Header.Set(SecretHeader, d.Secret)
	}
	resp, err := d.client().Do(req)
	if err != nil {
		return 0, 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var retryAfter time.Duration
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
		retryAfter = time.Duration(s) * time.Second
	}
	return resp.StatusCode, retryAfter, nil
}

// DeliverAll delivers events with workers deliveries at once, in the order
// given, and returns the first error.
func (d *Driver) DeliverAll(ctx context.Context, events []Event, workers int) error {
	next := make(chan Event)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range workers {
		wg.Go(func() {
			for ev := range next {
				code, err := d.Deliver(ctx, ev)
				if err == nil && code != http.StatusOK {
					err = fmt.Errorf("faulttest: event %s refused with %d", ev.ID, code)
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for _, ev := range events {
		next <- ev
	}
	close(next)
	wg.Wait()
	return first
}

// DeliverTwice delivers ev, then the same event again, as Hasura does when
// the reply to a delivery was lost.
func (d *Driver) DeliverTwice(ctx context.Context, ev Event) error {
	for range 2 {
		if code, err := d.Deliver(ctx, ev); err != nil {
			return err
		} else if code != http.StatusOK {
			return fmt.Errorf("faulttest: event %s refused with %d", ev.ID, code)
		}
	}
	return nil
}

// DeliverConcurrently delivers ev n times at once, as Hasura instances
// racing for the same event would.
func (d *Driver) DeliverConcurrently(ctx context.Context, ev Event, n int) error {
	errs := make(chan error, n)
	for range n {
		go func() {
			code, err := d.Deliver(ctx, ev)
			if err == nil && code != http.StatusOK {
				err = fmt.Errorf("faulttest: event %s refused with %d", ev.ID, code)
			}
			errs <- err
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}
