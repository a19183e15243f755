package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// shutdown_test.go runs this binary again as the real lmproxy, to send it real signals.
	if os.Getenv(runMainEnv) == "1" {
		main() // exits
	}
	// warmheap_test.go counts a fresh process's page faults in this binary run again.
	if mode := os.Getenv(heapFaultsEnv); mode != "" {
		os.Exit(reportHeapFaults(mode))
	}
	// serve persists its registry under the user's state directory by default: keep tests out of it.
	dir, err := os.MkdirTemp("", "lmproxy-cmd-test")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_STATE_HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestHelpListsCommandsAndExits0(t *testing.T) {
	for _, arg := range []string{"-h", "--help"} {
		var stdout, stderr bytes.Buffer
		require.Equal(t, 0, run(context.Background(), []string{arg}, &stdout, &stderr))
		require.Contains(t, stdout.String(), "serve")
		require.Contains(t, stdout.String(), "replica")
		require.Empty(t, stderr.String())
	}
}

func TestUnknownCommandExits2WithOneLine(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 2, run(context.Background(), []string{"bogus"}, &stdout, &stderr))
	requireOneLine(t, stderr.String(), `"bogus"`)
	require.Empty(t, stdout.String())
}

func TestNoCommandExits2(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 2, run(context.Background(), nil, &stdout, &stderr))
	require.Contains(t, stderr.String(), "Usage: lmproxy")
}

// requireOneLine checks that out is exactly one line and contains want.
func requireOneLine(t *testing.T, out, want string) {
	t.Helper()
	require.True(t, strings.HasSuffix(out, "\n"), "not a line: %q", out)
	require.Equal(t, 1, strings.Count(out, "\n"), "more than one line: %q", out)
	require.Contains(t, out, want)
}

// syncBuffer collects what a command writes while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls b until a line holds want and returns that line; it fails the test after 10s.
func (b *syncBuffer) waitFor(t *testing.T, want string) string {
	t.Helper()
	var line string
	require.Eventually(t, func() bool {
		for l := range strings.Lines(b.String()) {
			if strings.Contains(l, want) {
				line = l
				return true
			}
		}
		return false
	}, 10*time.Second, 5*time.Millisecond, "no line with %q in:\n%s", want, b)
	return line
}

// started is a command running in-process.
type started struct {
	stdout, stderr *syncBuffer
	cancel         context.CancelFunc
	code           chan int
}

// start runs a command in a goroutine until stop or the end of the test.
func start(t *testing.T, cmd func(context.Context, []string, io.Writer, io.Writer) int, args ...string) *started {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{stdout: &syncBuffer{}, stderr: &syncBuffer{}, cancel: cancel, code: make(chan int, 1)}
	go func() { s.code <- cmd(ctx, args, s.stdout, s.stderr) }()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop cancels the command's context and returns its exit status.
func (s *started) stop(t *testing.T) int {
	t.Helper()
	s.cancel()
	select {
	case code := <-s.code:
		s.code <- code // a second stop, such as the cleanup's, sees it too
		return code
	case <-time.After(15 * time.Second):
		t.Fatal("command did not stop within 15s of its context's end")
		return -1
	}
}

// startServe runs `lmproxy serve` on a free loopback port with JSON logs and returns it with its URL,
// read from the `listening` line.
func startServe(t *testing.T, args ...string) (*started, string) {
	t.Helper()
	s := start(t, runServe, append([]string{"--host", "127.0.0.1", "--port", "0", "--log-format", "json"}, args...)...)
	var entry struct{ URL string }
	require.NoError(t, json.Unmarshal([]byte(s.stderr.waitFor(t, `"msg":"listening"`)), &entry))
	require.NotEmpty(t, entry.URL)
	return s, entry.URL
}

// newClient returns a client whose connections are closed when the test ends, so the leak check
// sees none of them.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
