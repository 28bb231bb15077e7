// Package controlkvtest makes the operator controls' bucket for tests of
// processes that obey the controls (a dispatcher binary) without a
// completer running. It is a package of its own, not part of
// internal/testenv: the controls' bucket needs pkg/effects, which
// internal/testenv must not import (pkg/effects and the packages it uses
// test themselves with it).
package controlkvtest

import (
	"context"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/controlkv"
	"github.com/effects-run/effects/internal/testenv"
	"github.com/effects-run/effects/pkg/effects"
)

// Bucket creates the operator controls' bucket (EFFECTS_CONTROL) on n as
// `completer migrate` makes it for a table with nothing paused and nothing
// cancelled, so that a dispatcher with the controls (the binary) starts
// effects without a completer running.
func Bucket(t testing.TB, n *testenv.NATS) {
	t.Helper()
	_, js := n.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, controlkv.Config(effects.StreamOptions{}))
	if err != nil {
		t.Fatalf("control bucket: %v", err)
	}
	if _, err := kv.Put(ctx, controlkv.SyncedKey, controlkv.Mark{By: "test", At: time.Now()}.Encode()); err != nil {
		t.Fatalf("control bucket: %v", err)
	}
}
