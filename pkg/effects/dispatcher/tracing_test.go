package dispatcher

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// The effect message's traceparent (set by the ingest from Hasura's trace)
// is continued by the attempt's span, reaches the http_request target, and
// travels on the completion message.
func TestAttemptContinuesTheEffectsTrace(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	otel.SetTracerProvider(tp) // not restored: a shut down provider records nothing
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	parent := "00-" + traceID + "-00f067aa0ba902b7-01"
	seen := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("traceparent")
	}))
	t.Cleanup(srv.Close)
	h, err := handlers.NewHTTPRequest(handlers.HTTPConfig{Allow: []string{strings.TrimPrefix(srv.URL, "http://")}})
	if err != nil {
		t.Fatal(err)
	}
	reg := effects.NewRegistry()
	reg.Handle("http_request", h)
	b := setup(t, testConfig(), reg)
	comps := make(chan *nats.Msg, 1)
	sub, err := b.js.Conn().ChanSubscribe(effects.CompletedPrefix+"http_request", comps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	id := newID()
	msg := nats.NewMsg(effects.Subject("http_request"))
	msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":"http_request","payload":{"url":%q,"method":"GET"},"created_at":%q,"session_variables":null}`,
		id, srv.URL, time.Now().UTC().Format(time.RFC3339Nano))
	msg.Header.Set("Nats-Msg-Id", "ev-"+id)
	msg.Header.Set("Traceparent", parent)
	if _, err := b.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if c := b.completion(id); c.Status != effects.StatusSucceeded {
		t.Fatalf("completion %+v", c)
	}
	target := <-seen
	if !strings.HasPrefix(target, "00-"+traceID+"-") || target == parent {
		t.Fatalf("target saw traceparent %q, want the attempt's span in trace %s", target, traceID)
	}
	select {
	case cm := <-comps:
		if got := cm.Header.Get("Traceparent"); got != target {
			t.Fatalf("completion traceparent %q, want the attempt's %q", got, target)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no completion message")
	}

	var span *tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.SpanContext.TraceID().String() == traceID && s.Name == "effect http_request" {
			span = &s
		}
	}
	if span == nil {
		t.Fatalf("no attempt span in trace %s: %+v", traceID, exp.GetSpans())
	}
	if span.Parent.SpanID().String() != "00f067aa0ba902b7" || !strings.Contains(target, span.SpanContext.SpanID().String()) {
		t.Fatalf("span %v parent %v, target saw %q", span.SpanContext, span.Parent, target)
	}
	want := map[attribute.Key]string{"effect.id": id, "effect.kind": "http_request"}
	for _, kv := range span.Attributes {
		if w, ok := want[kv.Key]; ok && kv.Value.AsString() == w {
			delete(want, kv.Key)
		}
	}
	if len(want) != 0 {
		t.Fatalf("span attributes %v lack %v", span.Attributes, want)
	}
}

// An async handler's Done, given the attempt's ctx, puts the attempt's
// traceparent on the completion it publishes.
func TestAsyncCompletionCarriesTheTrace(t *testing.T) {
	const traceID = "5bf92f3577b34da6a3ce929d0e0e4736"
	reg := effects.NewRegistry()
	reg.HandleAsync("later", func(ctx context.Context, _ effects.Effect, done effects.Done) error {
		return done.Complete(ctx, "ok")
	})
	b := setup(t, testConfig(), reg)
	comps := make(chan *nats.Msg, 1)
	sub, err := b.js.Conn().ChanSubscribe(effects.CompletedPrefix+"later", comps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	id := newID()
	msg := nats.NewMsg(effects.Subject("later"))
	msg.Data = fmt.Appendf(nil, `{"id":%q,"kind":"later","payload":{},"created_at":%q,"session_variables":null}`,
		id, time.Now().UTC().Format(time.RFC3339Nano))
	msg.Header.Set("Nats-Msg-Id", "ev-"+id)
	msg.Header.Set("Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if _, err := b.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	select {
	case cm := <-comps:
		// Without a tracer provider the attempt's span is the parent's.
		if got := cm.Header.Get("Traceparent"); !strings.HasPrefix(got, "00-"+traceID+"-") {
			t.Fatalf("completion traceparent %q, want one in trace %s", got, traceID)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no completion message")
	}
}

// While tracing is off an attempt starts no span: the context it runs in
// carries what a span of OpenTelemetry's no-op tracer would, the parent's
// span context or none, whatever the message's headers hold.
func TestCarryParentIsWhatANoopSpanCarries(t *testing.T) {
	tr := noop.NewTracerProvider().Tracer("")
	for _, tc := range []nats.Header{
		nil,
		{},
		{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
		{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}},
		{"Traceparent": {"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}},
		{"Traceparent": {"not a traceparent"}},
		{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "Tracestate": {"a=b"}},
		{"traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},
	} {
		ctx, span := carryParent(context.Background(), tc)
		wctx, want := tr.Start(propagator.Extract(context.Background(), propagation.HeaderCarrier(http.Header(tc))), "effect k")
		if !span.SpanContext().Equal(want.SpanContext()) || span.IsRecording() {
			t.Errorf("%v: span %v, want %v", tc, span.SpanContext(), want.SpanContext())
		}
		if got, w := trace.SpanContextFromContext(ctx), trace.SpanContextFromContext(wctx); !got.Equal(w) {
			t.Errorf("%v: context's span %v, want %v", tc, got, w)
		}
	}
}
