package completer

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: the
// completer starts writers, keep-alive timers and consume callbacks, and a
// stop must end every one of them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
