package dispatcher

import (
	"context"
	"net/http"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/effects-run/effects/internal/tracing"
)

// tracerName names the dispatcher's spans' instrumentation scope.
const tracerName = "github.com/effects-run/effects/pkg/effects/dispatcher"

// propagator reads and writes the W3C traceparent of NATS messages. It is
// fixed rather than the global one so that an effect's trace travels even
// when no tracing is configured (the global propagator is a no-op then).
var propagator = propagation.TraceContext{}

// startAttempt starts the span of one handler attempt, continuing the trace
// whose traceparent the effect message carries (the ingest sets it from
// Hasura's trace). With no tracer provider installed the span records
// nothing but still carries the parent, so http_request passes it on.
//
// While no tracer provider is installed no span is started at all (a span
// and its options cost about eight allocations per effect): the context
// carries the parent's span context, which is what the span would carry.
func startAttempt(ctx context.Context, h nats.Header, kind, id string, attempt int) (context.Context, trace.Span) {
	if tracing.Off() {
		return carryParent(ctx, h)
	}
	ctx = propagator.Extract(ctx, propagation.HeaderCarrier(http.Header(h)))
	return otel.Tracer(tracerName).Start(ctx, "effect "+kind,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("effect.id", id),
			attribute.String("effect.kind", kind),
			attribute.Int("effect.attempt", attempt),
		))
}

// carryParent is startAttempt while tracing is off: ctx with the parent's
// span context from h, if it has a valid one, and a span that records
// nothing and carries it.
func carryParent(ctx context.Context, h nats.Header) (context.Context, trace.Span) {
	if len(h["Traceparent"]) > 0 {
		ctx = propagator.Extract(ctx, propagation.HeaderCarrier(http.Header(h)))
	}
	return ctx, trace.SpanFromContext(ctx)
}

// injectTrace puts the attempt's traceparent on its completion message.
func injectTrace(dl *delivery, msg *nats.Msg) {
	sc := dl.trace
	if !sc.IsValid() {
		return
	}
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	propagator.Inject(trace.ContextWithSpanContext(context.Background(), sc), propagation.HeaderCarrier(http.Header(msg.Header)))
}
