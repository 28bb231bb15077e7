package jspub

import (
	"testing"

	"go.uber.org/goleak"
)

// The publisher's watcher must end with its connection or its Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
