package main

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// machine describes where the benchmark ran.
type machine struct {
	NumCPU      int
	CPUModel    string
	GoVersion   string
	PGVersion   string
	NATSVersion string
	// LoadStart and LoadEnd are /proc/loadavg's 1, 5 and 15 minute load
	// averages before and after: on a shared machine, how much else ran.
	LoadStart, LoadEnd string
	Took               time.Duration
}

func describeMachine(ctx context.Context, conn *pgx.Conn, natsServer string) machine {
	m := machine{NumCPU: runtime.NumCPU(), GoVersion: runtime.Version(), LoadStart: loadAverage(), CPUModel: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if err := conn.QueryRow(ctx, `SHOW server_version`).Scan(&m.PGVersion); err != nil {
		m.PGVersion = "unknown"
	}
	m.NATSVersion = "unknown"
	if out, err := exec.CommandContext(ctx, natsServer, "--version").Output(); err == nil {
		// "nats-server: v2.15.3"
		f := strings.Fields(string(out))
		if len(f) > 0 {
			m.NATSVersion = strings.TrimPrefix(f[len(f)-1], "v")
		}
	}
	return m
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
