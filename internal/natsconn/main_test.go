package natsconn

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: a
// refused or closed connection must not keep its reader, flusher or
// callback dispatcher running.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
