package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchNATSServerEnv names a nats-server binary (`make nats-server` builds
// the pinned one into bin/tools) for [StartBenchNATS] to run as a process of
// its own.
const BenchNATSServerEnv = "EFFECTS_BENCH_NATS_SERVER"

// BenchNATSURLEnv names a running NATS server with JetStream, started anew
// for the benchmark, that [StartBenchNATS] uses instead (for a profiler
// that does not follow child processes, such as valgrind).
const BenchNATSURLEnv = "EFFECTS_BENCH_NATS_URL"

// BenchNATS is the NATS server of a benchmark: in this process, or, with
// EFFECTS_BENCH_NATS_SERVER set, a process of its own, so that the
// benchmark's -benchmem allocations and CPU are the service's alone and the
// server's CPU can be read apart.
type BenchNATS struct {
	URL string
	pid int
}

// StartBenchNATS starts the NATS server of a benchmark (see [BenchNATS]);
// it is stopped when the benchmark ends.
func StartBenchNATS(b testing.TB) *BenchNATS {
	b.Helper()
	if url := os.Getenv(BenchNATSURLEnv); url != "" {
		return &BenchNATS{URL: url}
	}
	path := os.Getenv(BenchNATSServerEnv)
	if path == "" {
		return &BenchNATS{URL: StartNATS(b).URL}
	}
	port := FixedPort(b)
	cmd := exec.Command(path, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", b.TempDir())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s (%s): %v", path, BenchNATSServerEnv, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	WaitFor(b, 15*time.Second, "the nats-server process to accept connections", func() bool {
		select {
		case <-exited:
			b.Fatalf("%s exited: %s", path, out.String())
		default:
		}
		nc, err := nats.Connect(url, nats.Timeout(time.Second))
		if err != nil {
			return false
		}
		defer nc.Close()
		_, err = nc.RTT()
		return err == nil
	})
	return &BenchNATS{URL: url, pid: cmd.Process.Pid}
}

// Connect returns a client connection and JetStream context, closed when the
// benchmark ends.
func (n *BenchNATS) Connect(b testing.TB) (*nats.Conn, jetstream.JetStream) {
	b.Helper()
	return connect(b, n.URL)
}

// CPU is the server process's CPU time so far (user and system), or 0 when
// the server is not its child.
func (n *BenchNATS) CPU() time.Duration {
	if n.pid == 0 {
		return 0
	}
	return processCPU(n.pid)
}

// Separate reports whether the server runs in a process of its own started
// by StartBenchNATS, whose CPU is read.
func (n *BenchNATS) Separate() bool { return n.pid != 0 }

// processCPU reads utime + stime of a process from /proc/<pid>/stat.
func processCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (2nd field) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	fields := bytes.Fields(data[i+1:])
	// fields[0] is the state (3rd field): utime is the 14th, stime the 15th.
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(string(fields[11]), 10, 64)
	stime, _ := strconv.ParseInt(string(fields[12]), 10, 64)
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// SelfCPU is this process's CPU time so far (user and system).
func SelfCPU() time.Duration { return processCPU(os.Getpid()) }
