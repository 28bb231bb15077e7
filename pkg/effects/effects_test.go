package effects_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/effects-run/effects/pkg/effects"
)

func TestValidateKind(t *testing.T) {
	for _, ok := range []string{"echo", "http_request", "publish-rateset", "A1", strings.Repeat("k", 64)} {
		if err := effects.ValidateKind(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "completed", "a.b", "a*", "a>", "with space", "ü", strings.Repeat("k", 65), "~invalid"} {
		err := effects.ValidateKind(bad)
		if !errors.Is(err, effects.ErrInvalidKind) {
			t.Errorf("%q: got %v, want ErrInvalidKind", bad, err)
		}
	}
}

func TestSubjects(t *testing.T) {
	if got := effects.Subject("echo"); got != "effects.echo" {
		t.Fatal(got)
	}
	if got := effects.CompletedSubject("echo"); got != "effects.completed.echo" {
		t.Fatal(got)
	}
	for _, bad := range []string{"a.b", "completed", ""} {
		if got := effects.CompletedSubject(bad); got != effects.InvalidKindSubject {
			t.Fatalf("%q: %s", bad, got)
		}
	}
}

func TestParseCompletion(t *testing.T) {
	good := `{"effect_id":"0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c11","kind":"echo","status":"succeeded","completion":{"a":1},"error":null,"attempts":2,"completed_at":"2026-03-14T09:27:40.1Z"}`
	c, err := effects.ParseCompletion([]byte(good))
	if err != nil || c.Attempts != 2 || string(c.Completion) != `{"a":1}` || c.Status != effects.StatusSucceeded {
		t.Fatalf("%+v %v", c, err)
	}
	for name, body := range map[string]string{
		"not json":       `nope`,
		"bad id":         strings.Replace(good, "0d8a6f4e", "zzzz", 1),
		"bad status":     strings.Replace(good, `"succeeded"`, `"done"`, 1),
		"negative":       strings.Replace(good, `"attempts":2`, `"attempts":-1`, 1),
		"no completedAt": strings.Replace(good, `,"completed_at":"2026-03-14T09:27:40.1Z"`, ``, 1),
	} {
		if _, err := effects.ParseCompletion([]byte(body)); !errors.Is(err, effects.ErrMalformedCompletion) {
			t.Errorf("%s: got %v", name, err)
		}
	}
}

func TestIsUUID(t *testing.T) {
	if !effects.IsUUID("0D8A6F4E-2b1c-4c6e-9a0f-5f3d2e1b7c11") {
		t.Fatal("upper case uuid refused")
	}
	for _, bad := range []string{"", "0d8a6f4e2b1c4c6e9a0f5f3d2e1b7c11", "0d8a6f4e-2b1c-4c6e-9a0f-5f3d2e1b7c1g", "0d8a6f4e-2b1c-4c6e-9a0f_5f3d2e1b7c11"} {
		if effects.IsUUID(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRetryErrors(t *testing.T) {
	base := errors.New("429 from api")
	p := fmt.Errorf("wrapped: %w", effects.Permanent(base))
	if !effects.IsPermanent(p) || !errors.Is(p, base) || p.Error() != "wrapped: 429 from api" {
		t.Fatalf("permanent: %v", p)
	}
	if effects.IsPermanent(base) {
		t.Fatal("plain error is permanent")
	}
	r := fmt.Errorf("wrapped: %w", effects.RetryAfter(3*time.Second, base))
	if d, ok := effects.RetryDelay(r); !ok || d != 3*time.Second || !errors.Is(r, base) {
		t.Fatalf("retry after: %v %v", d, ok)
	}
	if _, ok := effects.RetryDelay(base); ok {
		t.Fatal("plain error has a delay")
	}
	if d, _ := effects.RetryDelay(effects.RetryAfter(-time.Second, nil)); d != 0 {
		t.Fatalf("negative delay kept: %v", d)
	}
	if effects.Permanent(nil).Error() == "" {
		t.Fatal("nil permanent has no text")
	}
}

func TestRegistry(t *testing.T) {
	reg := effects.NewRegistry()
	reg.Handle("b_sync", func(context.Context, effects.Effect) (any, error) { return 1, nil })
	reg.HandleAsync("a_async", func(context.Context, effects.Effect, effects.Done) error { return nil })
	if got := reg.Kinds(); len(got) != 2 || got[0] != "a_async" || got[1] != "b_sync" {
		t.Fatalf("kinds %v", got)
	}
	if err := reg.Register("b_sync", func(context.Context, effects.Effect) (any, error) { return nil, nil }); err == nil {
		t.Fatal("duplicate kind registered")
	}
	if err := reg.Register("a.b", func(context.Context, effects.Effect) (any, error) { return nil, nil }); !errors.Is(err, effects.ErrInvalidKind) {
		t.Fatalf("invalid kind: %v", err)
	}
	if err := reg.Register("nil_handler", nil); err == nil {
		t.Fatal("nil handler registered")
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("Handle did not panic on a duplicate")
			}
		}()
		reg.Handle("b_sync", func(context.Context, effects.Effect) (any, error) { return nil, nil })
	}()
	h, ok := reg.Lookup("a_async")
	if !ok || !h.IsAsync() || h.Kind() != "a_async" {
		t.Fatal("lookup async")
	}
	if _, deferred, err := h.Call(context.Background(), effects.Effect{}, nil); !deferred || err != nil {
		t.Fatal("async call not deferred")
	}
	h, _ = reg.Lookup("b_sync")
	if v, deferred, err := h.Call(context.Background(), effects.Effect{}, nil); v != 1 || deferred || err != nil {
		t.Fatal("sync call")
	}
}

func TestMarshalResult(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want string
	}{
		{nil, "null"},
		{json.RawMessage(nil), "null"},
		{json.RawMessage(`{"a":  1}`), `{"a":  1}`},
		{map[string]int{"a": 1}, `{"a":1}`},
		{"text", `"text"`},
	} {
		got, err := effects.MarshalResult(tc.in)
		if err != nil || string(got) != tc.want {
			t.Errorf("%v: %s %v", tc.in, got, err)
		}
	}
	if _, err := effects.MarshalResult(json.RawMessage(`{bad`)); err == nil {
		t.Fatal("invalid raw message accepted")
	}
	if _, err := effects.MarshalResult(make(chan int)); err == nil {
		t.Fatal("channel marshalled")
	}
}

func TestCompletionMsgID(t *testing.T) {
	ref := effects.Ref{ID: "id", Kind: "k", EventID: "ev"}
	if effects.CompletionMsgID(ref, effects.StatusSucceeded) == effects.CompletionMsgID(ref, effects.StatusFailed) {
		t.Fatal("statuses share an id")
	}
	rerun := ref
	rerun.EventID = "ev2"
	if effects.CompletionMsgID(ref, effects.StatusSucceeded) == effects.CompletionMsgID(rerun, effects.StatusSucceeded) {
		t.Fatal("a re-run shares the first run's id")
	}
}

func TestStreamOptions(t *testing.T) {
	o := effects.StreamOptions{}.WithDefaults()
	if o.MaxAge != 168*time.Hour || o.Duplicates != 2*time.Minute || o.Replicas != 1 || o.Validate() != nil {
		t.Fatalf("%+v", o)
	}
	for _, bad := range []effects.StreamOptions{
		{MaxAge: time.Minute, Duplicates: time.Hour, Replicas: 1},
		{MaxAge: -1, Duplicates: time.Minute, Replicas: 1},
		{MaxAge: time.Hour, Duplicates: time.Minute, Replicas: 7},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
