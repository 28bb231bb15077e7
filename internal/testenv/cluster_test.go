package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestNATSClusterLeaderKilledAndBack checks the helper does what the cluster
// fault test relies on: an R3 stream keeps taking messages through the
// client's failover while its leader's node is down, and the node comes back
// on its own store and catches up.
func TestNATSClusterLeaderKilledAndBack(t *testing.T) {
	c := StartNATSCluster(t, 3)
	_, js := c.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "T", Subjects: []string{"t.>"}, Replicas: 3, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatal(err)
	}
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			for {
				pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := js.Publish(pctx, "t.x", fmt.Appendf(nil, "%d", i))
				pcancel()
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("publish %d: %v", i, err)
				}
			}
		}
	}
	publish(0, 100)
	leader := c.StreamLeader(t, js, "T", 10*time.Second)
	c.Kill(leader)
	publish(100, 200)
	if now := c.StreamLeader(t, js, "T", 20*time.Second); now == leader {
		t.Fatalf("the killed node %s still leads", leader.Name)
	}
	c.Restart(t, leader)
	c.WaitHealthy(t, 30*time.Second)

	// The restarted node holds every message in its own store, including
	// those stored while it was down.
	if got := c.LocalMessages(t, leader, "T"); got != 200 {
		t.Fatalf("the restarted node holds %d messages, want 200", got)
	}
}
