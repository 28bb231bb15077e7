package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// DebianNATSServer is where Debian's nats-server package (2.9.10 on
// bookworm) puts the binary.
const DebianNATSServer = "/usr/sbin/nats-server"

// OldNATS is a NATS server that announces an old version: a real server
// started from a binary, or a stand-in that speaks just enough of the protocol
// (INFO, PING/PONG) for a client to connect.
type OldNATS struct {
	Name string
	URL  string
}

// OldNATSServers returns a stand-in announcing version, and, when Debian's
// nats-server binary is installed and older than 2.10, that server started
// as a child process on a free port. Each is stopped when the test ends.
func OldNATSServers(t testing.TB, version string) []OldNATS {
	t.Helper()
	servers := []OldNATS{{Name: "stand-in " + version, URL: StartFakeNATS(t, version)}}
	if v := binaryVersion(DebianNATSServer); v != "" && strings.HasPrefix(v, "v2.") && !newerThan29(v) {
		servers = append(servers, OldNATS{Name: "debian " + v, URL: StartNATSBinary(t, DebianNATSServer)})
	}
	return servers
}

func binaryVersion(path string) string {
	if _, err := os.Stat(path); err != nil {
		return ""
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return ""
	}
	// "nats-server: v2.9.10"
	_, v, _ := strings.Cut(strings.TrimSpace(string(out)), ": ")
	return v
}

func newerThan29(v string) bool {
	var major, minor int
	_, err := fmt.Sscanf(v, "v%d.%d", &major, &minor)
	return err != nil || major > 2 || minor >= 10
}

// StartNATSBinary starts the nats-server at path on a free loopback port and
// returns its URL once it accepts connections.
func StartNATSBinary(t testing.TB, path string) string {
	t.Helper()
	port := FixedPort(t)
	cmd := exec.Command(path, "-a", "127.0.0.1", "-p", fmt.Sprint(port))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return "nats://" + addr
		}
		select {
		case <-exited:
			t.Fatalf("%s exited before accepting connections", path)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not accept connections on %s in 15s", path, addr)
		}
	}
}

// StartFakeNATS serves the start of the NATS protocol on a loopback port,
// announcing version in its INFO, and answers PING with PONG: enough for a
// client to connect and read the server's version.
func StartFakeNATS(t testing.TB, version string) string {
	t.Helper()
	return ServeFakeNATS(t, "127.0.0.1:0", version)
}

// ServeFakeNATS is [StartFakeNATS] on a given address.
func ServeFakeNATS(t testing.TB, addr, version string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { serveFakeNATS(c, version) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "nats://" + ln.Addr().String()
}

func serveFakeNATS(c net.Conn, version string) {
	defer c.Close()
	info := fmt.Sprintf(`INFO {"server_id":"FAKE","server_name":"fake","version":%q,"proto":1,"go":"go1.19","host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576}`+"\r\n", version)
	if _, err := c.Write([]byte(info)); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(line, "PING") {
			if _, err := c.Write([]byte("PONG\r\n")); err != nil {
				return
			}
		}
	}
}
