// Package tracing tells the services' hot paths whether spans are recorded
// at all, so that they skip making spans nobody records.
package tracing

import "go.opentelemetry.io/otel"

// initial is OpenTelemetry's global tracer provider before anyone installs
// one: a delegate whose spans record nothing and only carry their parent's
// span context.
var initial = otel.GetTracerProvider()

// Off reports whether no tracer provider was installed (otel.SetTracerProvider
// was never called). Every span started then is a non-recording one with its
// parent's span context, so a caller that needs only that context can skip
// starting it: a span with its options costs about eight allocations per
// effect (docs/performance.md).
func Off() bool { return otel.GetTracerProvider() == initial }
