package service

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// startTracing installs an OpenTelemetry tracer provider when the standard
// OTEL_* variables configure a span exporter (OTEL_TRACES_EXPORTER=otlp,
// with OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, ...), and
// returns the function that flushes and stops it. With OTEL_TRACES_EXPORTER
// unset or "none" it installs nothing: the spans the services start are
// no-ops and cost next to nothing (the trace context still travels).
func startTracing(ctx context.Context, name string) (stop func(context.Context) error, err error) {
	switch strings.TrimSpace(os.Getenv("OTEL_TRACES_EXPORTER")) {
	case "", "none":
		return func(context.Context) error { return nil }, nil
	}
	exp, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: %w", err)
	}
	// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, read by
	// resource.WithFromEnv, win over the service's own name.
	res, err := sdkresource.New(ctx,
		sdkresource.WithAttributes(attribute.String("service.name", "effects-"+name)),
		sdkresource.WithFromEnv(), sdkresource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}
