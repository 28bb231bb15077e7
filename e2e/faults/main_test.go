//go:build faults

// Package faults runs the real service binaries (ingest, dispatcher,
// completer) as OS processes against an in-process NATS server with a file
// store and a PostgreSQL, injects one fault per test (kill -9, SIGTERM, NATS
// or PostgreSQL stopped and started, the rate-limit bucket lost with a NATS
// restart or deleted, Hasura delivering the same event twice or at once or
// out of order, a MANUAL re-run during retries), and ends by
// reading every row back: 0 lost, 0 completed twice, and run twice only where
// the design allows it. `make faults` runs them; each test records a
// faulttest.Result (EFFECTS_FAULTS_RESULTS names a file to append them to).
package faults

import (
	"fmt"
	"os"
	"testing"

	"github.com/effects-run/effects/internal/faulttest"
)

// bins are the service binaries, built once per run.
var bins faulttest.Binaries

func TestMain(m *testing.M) {
	var err error
	bins, err = faulttest.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(bins.Dir)
	os.Exit(code)
}
