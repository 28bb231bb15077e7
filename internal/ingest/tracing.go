package ingest

import (
	"context"
	"net/http"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/effects-run/effects/internal/tracing"
)

const tracerName = "github.com/effects-run/effects/internal/ingest"

// requestPropagator reads the trace Hasura's request headers carry: W3C
// traceparent, or B3 (X-B3-TraceId, X-B3-SpanId, X-B3-Sampled, or the single
// b3 header).
var requestPropagator = propagation.NewCompositeTextMapPropagator(
	propagation.TraceContext{},
	b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader)),
)

// headerParent returns the request headers' trace as a traceparent value,
// "" when they carry none.
func headerParent(h http.Header) string {
	// Every propagator needs its trace id header; without any, the
	// propagators' work (a context, carriers, parsing) is for nothing, and
	// this runs on every request whose body has no trace_context.
	if len(h["Traceparent"]) == 0 && len(h["X-B3-Traceid"]) == 0 && len(h["B3"]) == 0 {
		return ""
	}
	ctx := requestPropagator.Extract(context.Background(), propagation.HeaderCarrier(h))
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c["traceparent"]
}

// noSpan is the span of an effect while tracing is off.
var noSpan = trace.SpanFromContext(context.Background())

// startPublish starts the ingest's span of one effect, a child of parent (a
// traceparent, "" for a new trace), and puts the span's traceparent on msg.
// With tracing off the span would record nothing and carry parent, so none
// is started and msg carries parent as is (parent is a valid traceparent in
// the form propagation writes: traceparent and headerParent make it so).
func startPublish(parent string, msg *nats.Msg, effectID, kind string) trace.Span {
	if tracing.Off() {
		if parent != "" {
			msg.Header[TraceparentHeader] = []string{parent}
		}
		return noSpan
	}
	ctx := context.Background()
	if parent != "" {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": parent})
	}
	ctx, span := otel.Tracer(tracerName).Start(ctx, "ingest "+kind,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("effect.id", effectID),
			attribute.String("effect.kind", kind),
		))
	if sc := span.SpanContext(); sc.IsValid() {
		propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(http.Header(msg.Header)))
	}
	return span
}
