package tracing

import (
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Off is true until a tracer provider is installed, and false after.
func TestOffUntilAProviderIsInstalled(t *testing.T) {
	if !Off() {
		t.Fatal("Off() = false before any tracer provider was installed")
	}
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	otel.SetTracerProvider(tp)
	if Off() {
		t.Fatal("Off() = true with a tracer provider installed")
	}
}
