package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/effects-run/effects/pkg/effects"
	"github.com/effects-run/effects/pkg/effects/handlers"
)

// A custom dispatcher registers the built-ins next to its own handlers. In a
// real binary the configuration comes from the environment with
// handlers.ConfigFromEnv(nil).
func ExampleRegister() {
	reg := effects.NewRegistry()
	cfg := handlers.Config{HTTP: handlers.HTTPConfig{Allow: []string{"api.example.com"}}}
	if err := handlers.Register(reg, cfg); err != nil {
		fmt.Println(err)
		return
	}
	reg.Handle("publish_rateset", func(ctx context.Context, e effects.Effect) (any, error) {
		return map[string]string{"published": "ok"}, nil
	})
	fmt.Println(reg.Kinds())

	echo, _ := reg.Lookup("echo")
	result, _, err := echo.Call(context.Background(), effects.Effect{
		Kind:    "echo",
		Payload: json.RawMessage(`{"hello": "world"}`),
	}, nil)
	fmt.Printf("%s %v\n", result, err)

	httpRequest, _ := reg.Lookup("http_request")
	_, _, err = httpRequest.Call(context.Background(), effects.Effect{
		Kind:    "http_request",
		Payload: json.RawMessage(`{"url": "http://169.254.169.254/latest/meta-data/"}`),
	}, nil)
	fmt.Println(err, effects.IsPermanent(err))
	// Output:
	// [echo http_request publish_rateset]
	// {"hello": "world"} <nil>
	// http_request: host "169.254.169.254" is not in EFFECTS_HTTP_ALLOW true
}

func ExampleNewHTTPRequest() {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, `{"method": %q, "received": %s}`, r.Method, body)
	}))
	defer api.Close()

	httpRequest, err := handlers.NewHTTPRequest(handlers.HTTPConfig{
		Allow: []string{strings.TrimPrefix(api.URL, "http://")}, // host:port
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	result, err := httpRequest(context.Background(), effects.Effect{
		Kind:    "http_request",
		Payload: json.RawMessage(`{"url": "` + api.URL + `/rates", "body": {"EURUSD": 1.08}}`),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	completion, _ := json.Marshal(result)
	fmt.Println(string(completion))
	// Output:
	// {"status":200,"body":{"method":"POST","received":{"EURUSD":1.08}}}
}
