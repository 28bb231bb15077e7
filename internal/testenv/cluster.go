package testenv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSCluster is a JetStream cluster of in-process servers: each node has
// its own client port, route port and file store, all fixed for the life of
// the test, so a node that is killed and started again comes back on the
// same addresses with the same data, as a restarted pod would.
type NATSCluster struct {
	Nodes []*ClusterNode
}

// ClusterNode is one server of a [NATSCluster].
type ClusterNode struct {
	// Name is the server name (n0, n1, ...): what StreamInfo.Cluster.Leader
	// and Replicas name.
	Name string
	// URL is the node's client URL; it does not change across restarts.
	URL    string
	Server *server.Server // nil while the node is down
	opts   *server.Options
}

// StartNATSCluster starts an n-node JetStream cluster on free ports, each
// node storing in a directory of the test's, and waits until JetStream has a
// meta leader that every node follows. The cluster is shut down when the
// test ends.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("a cluster of %d nodes", n)
	}
	clientPorts, routePorts := freePorts(t, n), freePorts(t, n)
	routes := make([]string, n)
	for i, p := range routePorts {
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", p)
	}
	c := &NATSCluster{}
	for i := range n {
		name := fmt.Sprintf("n%d", i)
		c.Nodes = append(c.Nodes, &ClusterNode{
			Name: name,
			URL:  fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[i]),
			opts: &server.Options{
				ServerName: name,
				Host:       "127.0.0.1",
				Port:       clientPorts[i],
				JetStream:  true,
				StoreDir:   t.TempDir(),
				Cluster: server.ClusterOpts{
					Name: "effects-test",
					Host: "127.0.0.1",
					Port: routePorts[i],
				},
				Routes: server.RoutesFromStr(strings.Join(routes, ",")),
				NoLog:  true,
				NoSigs: true,
			},
		})
	}
	t.Cleanup(c.Shutdown)
	for _, node := range c.Nodes {
		node.start(t)
	}
	c.WaitReady(t, 30*time.Second)
	return c
}

// freePorts returns n distinct ports for listeners bound again after a
// restart (FixedPort).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = FixedPort(t)
	}
	return ports
}

func (node *ClusterNode) start(t testing.TB) {
	t.Helper()
	// A copy, so that what the server fills in on one start does not leak
	// into the next.
	opts := node.opts.Clone()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server %s: %v", node.Name, err)
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		s.Shutdown()
		t.Fatalf("nats server %s not ready in 20s", node.Name)
	}
	node.Server = s
}

// URLs is the comma-separated client URLs of every node, as NATS_URL would
// name them, so that a client fails over to another node.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, node := range c.Nodes {
		urls[i] = node.URL
	}
	return strings.Join(urls, ",")
}

// Node returns the node of that server name, or nil.
func (c *NATSCluster) Node(name string) *ClusterNode {
	for _, node := range c.Nodes {
		if node.Name == name {
			return node
		}
	}
	return nil
}

// Kill stops the node at once (its clients see a disconnect and its peers
// lose it); its store stays for [NATSCluster.Restart].
func (c *NATSCluster) Kill(node *ClusterNode) {
	if node.Server != nil {
		node.Server.Shutdown()
		node.Server.WaitForShutdown()
		node.Server = nil
	}
}

// Restart starts a killed node again on the same ports and store and waits
// until the cluster is ready (the node follows the meta leader again). It
// does not wait for the node's streams to catch up: [NATSCluster.WaitHealthy]
// does.
func (c *NATSCluster) Restart(t testing.TB, node *ClusterNode) {
	t.Helper()
	c.Kill(node)
	node.start(t)
	c.WaitReady(t, 30*time.Second)
}

// Shutdown stops every node.
func (c *NATSCluster) Shutdown() {
	for _, node := range c.Nodes {
		c.Kill(node)
	}
}

// WaitReady waits until the running nodes have a JetStream meta leader and
// every running node is current with it.
func (c *NATSCluster) WaitReady(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		leader, current, running := 0, 0, 0
		for _, node := range c.Nodes {
			if node.Server == nil {
				continue
			}
			running++
			if node.Server.JetStreamIsLeader() {
				leader++
			}
			if node.Server.JetStreamIsCurrent() {
				current++
			}
		}
		if leader == 1 && current == running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream cluster not ready in %s: %d meta leaders, %d of %d running nodes current",
				within, leader, current, running)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// WaitHealthy waits until every running node reports healthy in the sense
// of its /healthz: JetStream enabled, the meta group current, and each of its
// stream and consumer replicas current with its leader (a restarted node has
// caught up).
func (c *NATSCluster) WaitHealthy(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var bad []string
		for _, node := range c.Nodes {
			if node.Server == nil {
				continue
			}
			if h := node.Server.Healthz(nil); h.Status != "ok" {
				bad = append(bad, fmt.Sprintf("%s: %s", node.Name, h.Error))
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream cluster not healthy in %s: %s", within, strings.Join(bad, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StreamLeader returns the node leading the stream's replicas, asking through
// js; each try has a short timeout, since a request sent while the leader is
// being elected gets no answer.
func (c *NATSCluster) StreamLeader(t testing.TB, js jetstream.JetStream, stream string, within time.Duration) *ClusterNode {
	t.Helper()
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := js.Stream(ctx, stream)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = s.Info(ctx)
		}
		cancel()
		switch {
		case err != nil:
			last = err
		case info.Cluster == nil || info.Cluster.Leader == "":
			last = errors.New("no leader")
		default:
			if node := c.Node(info.Cluster.Leader); node != nil {
				return node
			}
			last = fmt.Errorf("leader %q is not a node of this cluster", info.Cluster.Leader)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("leader of stream %s: %v", stream, last)
	return nil
}

// Connect returns a client connection to every node (it fails over) and a
// JetStream context, closed when the test ends.
func (c *NATSCluster) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return connect(t, c.URLs())
}

// LocalMessages returns how many messages the node's own replica of the
// stream holds (not the leader's count): what a restarted node caught up on.
func (c *NATSCluster) LocalMessages(t testing.TB, node *ClusterNode, stream string) uint64 {
	t.Helper()
	if node.Server == nil {
		t.Fatalf("node %s is down", node.Name)
	}
	jsz, err := node.Server.Jsz(&server.JSzOptions{Accounts: true, Streams: true})
	if err != nil {
		t.Fatalf("jsz of %s: %v", node.Name, err)
	}
	for _, acc := range jsz.AccountDetails {
		for _, s := range acc.Streams {
			if s.Name == stream {
				return s.State.Msgs
			}
		}
	}
	t.Fatalf("node %s has no replica of stream %s", node.Name, stream)
	return 0
}
