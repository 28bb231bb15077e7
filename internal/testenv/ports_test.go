package testenv

import (
	"fmt"
	"net"
	"testing"
)

// TestFixedPortIsOutsideTheEphemeralRange: the ports are bindable, distinct,
// and below the range the kernel hands out to listeners on port 0, so such a
// listener cannot take one between FixedPort and the bind (or a restart).
func TestFixedPortIsOutsideTheEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	seen := map[int]bool{}
	for range 200 {
		p := FixedPort(t)
		if p < fixedPortBase || p >= low {
			t.Fatalf("port %d outside [%d, %d)", p, fixedPortBase, low)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	for p := range seen {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		ln.Close()
		break
	}
	// A listener on port 0 gets a port of the ephemeral range.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if p := ln.Addr().(*net.TCPAddr).Port; p < low {
		t.Fatalf("ephemeral port %d below the range's low end %d: ephemeralLow is wrong", p, low)
	}
}
