package main

import (
	"syscall"
	"testing"
	"time"

	"github.com/effects-run/effects/internal/controlkv/controlkvtest"
	"github.com/effects-run/effects/internal/testenv"
)

// TestStopWithinTheShutdownTimeoutWhileNATSIsDown: SIGTERM while NATS is
// unreachable, with one handler still running and another's completion
// waiting for a PubAck that cannot come. The process exits 0 within
// EFFECTS_SHUTDOWN_TIMEOUT (plus a little to exit): the handlers, the wait
// for PubAcks and the connection's drain share that one deadline. Before,
// each waited a timeout of its own, twice the timeout in all.
func TestStopWithinTheShutdownTimeoutWhileNATSIsDown(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	controlkvtest.Bucket(t, n) // as completer migrate makes it
	_, js := n.Connect(t)
	finishes, runs := newBlockingServer(t), newBlockingServer(t)
	const timeout = 3 * time.Second
	p := testenv.StartProcess(t, selector, map[string]string{
		"NATS_URL": n.URL, "EFFECTS_ADMIN_ADDR": "127.0.0.1:0", "EFFECTS_HTTP_ALLOW": "127.0.0.1",
		"EFFECTS_SHUTDOWN_TIMEOUT": timeout.String(),
	})
	waitReady(t, p, "http://"+p.LoopbackAddr(t, "starting", "admin_addr"))
	publishHTTPRequest(t, js, finishes.URL)
	publishHTTPRequest(t, js, runs.URL)
	finishes.waitRequest(t, p)
	runs.waitRequest(t, p)

	n.Shutdown()
	finishes.unblock() // its completion goes out while NATS is away
	time.Sleep(200 * time.Millisecond)
	began := time.Now()
	p.Signal(t, syscall.SIGTERM)
	code := p.Wait(t)
	took := time.Since(began)
	t.Logf("exit %d, %s after SIGTERM (EFFECTS_SHUTDOWN_TIMEOUT %s)", code, took, timeout)
	if code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, p.Output())
	}
	// A correctness bound, not a speed one: the phases used to add up to
	// twice the timeout.
	if slack := 2 * time.Second; took > timeout+slack {
		t.Fatalf("exited %s after SIGTERM, want within EFFECTS_SHUTDOWN_TIMEOUT %s (+%s)\n%s", took, timeout, slack, p.Output())
	}
}
