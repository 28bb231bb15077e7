package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
)

// fixedPortBase is the lowest port FixedPort hands out: above the
// well-known and most registered service ports.
const fixedPortBase = 20000

var (
	handedOutMu sync.Mutex
	handedOut   = map[int]bool{}
)

// FixedPort returns a loopback TCP port that is free now, for a listener
// the test binds later, or binds again after a restart (a NATS server, a
// PostgreSQL cluster, a service's HTTP address). It lies below the kernel's
// ephemeral range: a port taken with a listener on port 0 and closed again
// is the kernel's to hand out next, and was seen given to another
// listener on port 0 (a service's admin address) before the test bound it.
// No port is handed out twice in one test process.
func FixedPort(t testing.TB) int {
	t.Helper()
	high := ephemeralLow()
	handedOutMu.Lock()
	defer handedOutMu.Unlock()
	for range 1000 {
		p := fixedPortBase + rand.IntN(high-fixedPortBase)
		if handedOut[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		_ = ln.Close()
		handedOut[p] = true
		return p
	}
	t.Fatalf("no free port between %d and %d after 1000 tries", fixedPortBase, high)
	return 0
}

// ephemeralLow is the bottom of the kernel's ephemeral port range (Linux:
// /proc/sys/net/ipv4/ip_local_port_range), 32768 where it cannot be read.
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var lo, hi int
		if n, _ := fmt.Sscan(string(b), &lo, &hi); n == 2 && lo > fixedPortBase+1000 {
			low = lo
		}
	}
	return low
}
