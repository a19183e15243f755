//go:build linux

package relay

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// socketPair returns a connected non-blocking pair: [0] the proxy's end, [1] the peer's.
func socketPair(t *testing.T) [2]int {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { syscall.Close(fds[0]); syscall.Close(fds[1]) })
	return fds
}

// stoppedLoop returns a loop whose goroutine does not run: the test hands it batches itself.
func stoppedLoop(t *testing.T) *loop {
	t.Helper()
	l, err := newLoop()
	require.NoError(t, err)
	t.Cleanup(l.closeFDs)
	return l
}

// readFor reads from fd until it has n bytes or the wait is over.
func readFor(t *testing.T, fd, n int) string {
	t.Helper()
	got := make([]byte, 0, n)
	buf := make([]byte, 64)
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		m, err := syscall.Read(fd, buf)
		if err == syscall.EAGAIN {
			time.Sleep(time.Millisecond)
			continue
		}
		require.NoError(t, err)
		got = append(got, buf[:m]...)
	}
	return string(got)
}

// firstChunk is a replica's first SSE event, in its chunk.
const firstChunk = "9\r\ndata: x\n\n\r\n"

// A stream's first bytes go out from the first-bytes loop, which then hands the stream to its
// relay loop; an event for it that the first loop had already read is no longer its own.
func TestStreamMovesOnAfterItsFirstBytes(t *testing.T) {
	first, then := stoppedLoop(t), stoppedLoop(t)
	up, client := socketPair(t), socketPair(t)
	s := &stream{up: up[0], client: client[0], hold: true, done: make(chan struct{}), then: then}
	require.True(t, first.add(s))
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: upToken(s.id)}

	_, err := syscall.Write(up[1], []byte(firstChunk))
	require.NoError(t, err)
	require.True(t, first.dispatch([]syscall.EpollEvent{ev}))
	require.Equal(t, firstChunk, readFor(t, client[1], len(firstChunk)))
	require.False(t, s.res.FirstByte.IsZero())
	require.Same(t, then, s.l)
	require.Nil(t, first.lookup(ev.Fd>>1), "the first loop let the stream go")
	require.Same(t, s, then.lookup(s.id))

	// The replica ends the body. An event for the stream that reaches the first loop now (one
	// epoll had queued before the move) must not touch the stream: it is the relay loop's.
	_, err = syscall.Write(up[1], []byte("0\r\n\r\n"))
	require.NoError(t, err)
	require.True(t, first.dispatch([]syscall.EpollEvent{ev}))
	require.False(t, s.finished)
	require.True(t, then.dispatch([]syscall.EpollEvent{{Events: syscall.EPOLLIN, Fd: upToken(s.id)}}))
	<-s.done
	res := s.result()
	require.True(t, res.Ended)
	require.True(t, res.Reusable)
	require.Equal(t, int64(len(firstChunk)+5), res.Written)
	require.Nil(t, then.lookup(s.id), "an ended stream leaves its loop")
}

// A stream whose first bytes came with the replica's answer head starts on its relay loop.
func TestStreamWithFirstBytesInTheHeadSkipsTheFirstLoop(t *testing.T) {
	r := New(1)
	require.NotNil(t, r)
	defer r.Close()
	up, client := socketPair(t), socketPair(t)
	out := make(chan Result, 1)
	go func() {
		res, _ := r.Run(t.Context(), up[0], client[0], []byte(firstChunk), true)
		out <- res
	}()
	require.Equal(t, firstChunk, readFor(t, client[1], len(firstChunk)))
	waitForStreams(t, r.loops[0], 1)
	require.Zero(t, streamsIn(r.first))
	_, err := syscall.Write(up[1], []byte("0\r\n\r\n"))
	require.NoError(t, err)
	require.True(t, (<-out).Ended)
}

// Close ends a stream that waits for its first bytes as cancelled, with nothing written.
func TestRelayCloseEndsAStreamBeforeItsFirstBytes(t *testing.T) {
	r := New(1)
	require.NotNil(t, r)
	up, client := socketPair(t), socketPair(t)
	out := make(chan Result, 1)
	go func() {
		res, _ := r.Run(t.Context(), up[0], client[0], nil, true)
		out <- res
	}()
	waitForStreams(t, r.first, 1)
	r.Close()
	res := <-out
	require.True(t, res.Cancelled)
	require.Zero(t, res.Written)
}

func streamsIn(l *loop) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.streams)
}

// waitForStreams waits until l holds n streams.
func waitForStreams(t *testing.T, l *loop, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for streamsIn(l) != n {
		require.True(t, time.Now().Before(deadline), "the loop never held %d streams", n)
		time.Sleep(time.Millisecond)
	}
}
