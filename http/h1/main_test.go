package h1_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: every test shuts its servers
// down and closes its clients' connections, and a server's hang-up watcher must stop with it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
