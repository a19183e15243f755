package main

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// lockedBuffer records what reaches the output, and how many writes brought it.
type lockedBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.writes++
	return b.buf.Write(p)
}

func (b *lockedBuffer) read() (string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.writes
}

// Access lines wait for the interval and go out together, in order, in one write.
func TestLogBatchWritesLinesTogether(t *testing.T) {
	out := &lockedBuffer{}
	b := newLogBatch(out, 20*time.Millisecond)
	defer b.Close()
	for i := 0; i < 100; i++ {
		b.Write([]byte("access " + strings.Repeat("x", i%7) + "\n"))
	}
	got, writes := out.read()
	require.Empty(t, got, "nothing goes out before the interval")
	require.Zero(t, writes)
	require.Eventually(t, func() bool { s, _ := out.read(); return strings.Count(s, "\n") == 100 }, 5*time.Second, time.Millisecond)
	got, writes = out.read()
	require.Equal(t, 1, writes)
	var want strings.Builder
	for i := 0; i < 100; i++ {
		want.WriteString("access " + strings.Repeat("x", i%7) + "\n")
	}
	require.Equal(t, want.String(), got)
}

// A line written directly goes out at once, after the access lines that wait: the order of all
// lines is the order they were written in.
func TestLogBatchDirectLinesKeepTheOrder(t *testing.T) {
	out := &lockedBuffer{}
	b := newLogBatch(out, time.Hour)
	defer b.Close()
	b.Write([]byte("access 1\n"))
	b.Write([]byte("access 2\n"))
	b.Direct().Write([]byte("warning\n"))
	got, _ := out.read()
	require.Equal(t, "access 1\naccess 2\nwarning\n", got)
	b.Direct().Write([]byte("error\n"))
	got, _ = out.read()
	require.Equal(t, "access 1\naccess 2\nwarning\nerror\n", got)
}

// A full batch goes out without waiting; Close writes what waits, and later lines go out at once.
func TestLogBatchFullAndClose(t *testing.T) {
	out := &lockedBuffer{}
	b := newLogBatch(out, time.Hour)
	line := []byte(strings.Repeat("a", 1023) + "\n")
	for i := 0; i < maxLogBatch/len(line); i++ {
		b.Write(line)
	}
	got, writes := out.read()
	require.Equal(t, 1, writes, "a full batch is written at once")
	require.Len(t, got, maxLogBatch)
	b.Write([]byte("last\n"))
	require.NoError(t, b.Close())
	got, _ = out.read()
	require.True(t, strings.HasSuffix(got, "a\nlast\n"))
	b.Write([]byte("after close\n"))
	got, _ = out.read()
	require.True(t, strings.HasSuffix(got, "last\nafter close\n"))
}
