package completer

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/effects-run/effects/internal/tracing"
)

const tracerName = "github.com/effects-run/effects/internal/completer"

// startWrites starts, for each row whose completion message carries a W3C
// traceparent (the dispatcher's attempt span), a span of its write as a
// child in that trace: the effect's trace then ends at the row. Rows are
// written in batches, so these spans share the batch's start and end.
// While tracing is off no span would record, and none is started.
func startWrites(ctx context.Context, rows []*item) {
	if tracing.Off() {
		return
	}
	tr := otel.Tracer(tracerName)
	for _, it := range rows {
		h := it.msg.Headers()
		if len(h["Traceparent"]) == 0 {
			continue
		}
		pctx := propagation.TraceContext{}.Extract(ctx, propagation.HeaderCarrier(http.Header(h)))
		if !trace.SpanContextFromContext(pctx).IsValid() {
			continue
		}
		_, span := tr.Start(pctx, "complete "+it.comp.Kind,
			trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(
				attribute.String("effect.id", it.comp.EffectID),
				attribute.String("effect.kind", it.comp.Kind),
				attribute.String("effect.status", string(it.comp.Status)),
				attribute.Int("completer.batch_size", len(rows)),
			))
		if !span.IsRecording() {
			continue // tracing is off
		}
		it.span = span
	}
}

// endWrites ends the spans startWrites started, after the batch's outcome.
func endWrites(rows []*item) {
	for _, it := range rows {
		if it.span == nil {
			continue
		}
		if it.res.outcome == notDone || it.res.outcome == rejected {
			it.span.SetStatus(codes.Error, "completion not written")
		}
		it.span.End()
		it.span = nil
	}
}
