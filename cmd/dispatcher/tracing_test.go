package main

import (
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/effects-run/effects/internal/controlkv/controlkvtest"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// otlpReceiver is an OTLP/HTTP trace receiver: it keeps the spans posted to
// /v1/traces with the service.name of their resource.
type otlpReceiver struct {
	mu    sync.Mutex
	spans map[string][]*tracepb.Span // by service.name
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if r.URL.Path != "/v1/traces" || err != nil || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "not an OTLP trace export", http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			o.spans[service] = append(o.spans[service], ss.Spans...)
		}
	}
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// With OTEL_TRACES_EXPORTER=otlp the dispatcher exports its attempt spans,
// in the effect message's trace, to the OTLP endpoint, and flushes them when
// it stops.
func TestExportsSpansOverOTLP(t *testing.T) {
	t.Parallel()
	rcv := &otlpReceiver{spans: map[string][]*tracepb.Span{}}
	srv := httptest.NewServer(rcv)
	t.Cleanup(srv.Close)
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)
	env := map[string]string{
		"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0",
		"OTEL_TRACES_EXPORTER":        "otlp",
		"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
		"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL,
	}
	p := testenv.StartProcess(t, selector, env)
	admin := "http://" + p.LoopbackAddr(t, "starting", "admin_addr")
	waitReady(t, p, admin)

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	id := newUUID(t)
	msg := nats.NewMsg(effects.Subject("echo"))
	msg.Data = []byte(`{"id":"` + id + `","kind":"echo","payload":{},"created_at":"` + time.Now().UTC().Format(time.RFC3339) + `","session_variables":null}`)
	msg.Header.Set(jetstream.MsgIDHeader, newUUID(t))
	msg.Header.Set("Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	ack, err := js.PublishMsg(t.Context(), msg)
	if err != nil {
		t.Fatal(err)
	}
	checkCompletion(t, p, js, published{id: id, seq: ack.Sequence}, `{}`, 1)

	p.Signal(t, syscall.SIGTERM)
	if code := p.Wait(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	var found *tracepb.Span
	for _, s := range rcv.spans["effects-dispatcher"] {
		if s.Name == "effect echo" && hex.EncodeToString(s.TraceId) == traceID {
			found = s
		}
	}
	if found == nil {
		t.Fatalf("no \"effect echo\" span of trace %s from service effects-dispatcher; received %v\n%s", traceID, rcv.spans, p.Output())
	}
	attrs := map[string]string{}
	for _, kv := range found.Attributes {
		attrs[kv.Key] = kv.GetValue().GetStringValue()
	}
	if attrs["effect.id"] != id || attrs["effect.kind"] != "echo" || hex.EncodeToString(found.ParentSpanId) != "00f067aa0ba902b7" {
		t.Errorf("span attributes %v parent %x", attrs, found.ParentSpanId)
	}
}
