package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/dispatcher"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// One trace from Hasura's request (B3 headers, as postRaw sends them)
// through the ingest, the dispatcher's attempt and the http_request target
// (which sees the traceparent) to the completer's write of the row.
func TestOneTraceFromIngestToCompleter(t *testing.T) {
	// Not parallel: the tracer provider is global.
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	otel.SetTracerProvider(tp) // not restored: a shut down provider records nothing
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736" // postRaw's X-B3-TraceId
	seen := make(chan string, 1)
	target := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case seen <- r.Header.Get("traceparent"):
		default:
		}
	}))
	t.Cleanup(target.Close)
	h, err := handlers.NewHTTPRequest(handlers.HTTPConfig{Allow: []string{strings.TrimPrefix(target.URL, "http://")}})
	if err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	reg.Handle("http_request", h)
	p := startPipeline(t, options{
		registry: reg,
		dispatcher: dispatcher.Config{
			Concurrency: 2, MaxAttempts: 3, RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
			HandlerTimeout: 5 * time.Second, ShutdownTimeout: 2 * time.Second,
		},
	})

	id, row := p.insert("http_request", fmt.Sprintf(`{"url": %q, "method": "POST"}`, target.URL))
	_, body := p.event("INSERT", row)
	if r := p.post(body); r.Code != 200 || r.EffectID != id {
		t.Fatalf("reply %+v", r)
	}
	if got := p.settled(id); got.Status != "succeeded" {
		t.Fatalf("row %+v", got)
	}

	byName := map[string]tracetest.SpanStub{}
	p.waitFor(10*time.Second, "the completer's span", func() bool {
		for _, s := range exp.GetSpans() {
			for _, kv := range s.Attributes {
				if kv.Key == "effect.id" && kv.Value.AsString() == id {
					byName[s.Name] = s
				}
			}
		}
		_, ok := byName["complete http_request"]
		return ok
	})
	ing, att, comp := byName["ingest http_request"], byName["effect http_request"], byName["complete http_request"]
	for name, s := range map[string]tracetest.SpanStub{"ingest": ing, "attempt": att, "completer": comp} {
		if got := s.SpanContext.TraceID().String(); got != traceID {
			t.Errorf("%s span trace id %q, want %s", name, got, traceID)
		}
	}
	if ing.Parent.SpanID().String() != "00f067aa0ba902b7" {
		t.Errorf("ingest span's parent %v, want Hasura's span", ing.Parent.SpanID())
	}
	if att.Parent.SpanID() != ing.SpanContext.SpanID() {
		t.Errorf("attempt span's parent %v, want the ingest span %v", att.Parent.SpanID(), ing.SpanContext.SpanID())
	}
	if comp.Parent.SpanID() != att.SpanContext.SpanID() {
		t.Errorf("completer span's parent %v, want the attempt span %v", comp.Parent.SpanID(), att.SpanContext.SpanID())
	}
	want := "00-" + traceID + "-" + att.SpanContext.SpanID().String() + "-01"
	if got := <-seen; got != want {
		t.Errorf("the target saw traceparent %q, want %q", got, want)
	}
}

// The table source starts a new trace per row; the dispatcher's attempt and
// the completer's write continue it.
func TestTableSourceStartsATracePerRow(t *testing.T) {
	// Not parallel: the tracer provider is global.
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	otel.SetTracerProvider(tp) // not restored: a shut down provider records nothing
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	reg := effects.NewRegistry()
	reg.Handle("echo", func(_ context.Context, e effects.Effect) (any, error) { return e.Payload, nil })
	p := startPipeline(t, options{
		registry:     reg,
		tableSources: 1,
		dispatcher: dispatcher.Config{
			Concurrency: 2, MaxAttempts: 3, RetryBase: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
			HandlerTimeout: 5 * time.Second, ShutdownTimeout: 2 * time.Second,
		},
	})
	ids := map[string]bool{}
	for range 2 {
		id, _ := p.insert("echo", `{}`)
		ids[id] = true
	}
	traces := map[string]map[string]tracetest.SpanStub{} // effect id -> span name -> span
	p.waitFor(30*time.Second, "both rows' completer spans", func() bool {
		for _, s := range exp.GetSpans() {
			for _, kv := range s.Attributes {
				if id := kv.Value.AsString(); kv.Key == "effect.id" && ids[id] {
					if traces[id] == nil {
						traces[id] = map[string]tracetest.SpanStub{}
					}
					traces[id][s.Name] = s
				}
			}
		}
		n := 0
		for _, m := range traces {
			if _, ok := m["complete echo"]; ok {
				n++
			}
		}
		return n == len(ids)
	})
	seen := map[string]bool{}
	for id, m := range traces {
		ing, att, comp := m["ingest echo"], m["effect echo"], m["complete echo"]
		tid := ing.SpanContext.TraceID()
		if !tid.IsValid() || ing.Parent.IsValid() {
			t.Errorf("row %s: the table source's span %v should start a trace (parent %v)", id, ing.SpanContext, ing.Parent)
		}
		if att.SpanContext.TraceID() != tid || comp.SpanContext.TraceID() != tid {
			t.Errorf("row %s: trace ids ingest %s attempt %s completer %s", id, tid, att.SpanContext.TraceID(), comp.SpanContext.TraceID())
		}
		if seen[tid.String()] {
			t.Errorf("two rows share trace %s", tid)
		}
		seen[tid.String()] = true
	}
}
