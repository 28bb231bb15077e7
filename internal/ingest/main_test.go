package ingest

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: Serve
// starts the stream setup, the consumer check and the HTTP server, and a
// stop must end every one of them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
