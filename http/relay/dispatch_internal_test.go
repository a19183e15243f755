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

// TestDispatchSendsFirstBytesFirst gives a stopped loop one batch in which a stream already under
// way comes before a stream's first bytes: the first bytes must reach the client first. Both
// streams write to one client socket, so what it reads shows the order.
func TestDispatchSendsFirstBytesFirst(t *testing.T) {
	l, err := newLoop()
	require.NoError(t, err)
	t.Cleanup(l.closeFDs)
	client := socketPair(t)
	upA, upB := socketPair(t), socketPair(t)
	under := &stream{up: upA[0], client: client[0], done: make(chan struct{})}
	under.res.FirstByte = time.Now() // its first bytes went out earlier
	first := &stream{up: upB[0], client: client[0], done: make(chan struct{})}
	require.True(t, l.insert(under))
	require.True(t, l.insert(first))
	_, err = syscall.Write(upA[1], []byte("1\r\nA\r\n"))
	require.NoError(t, err)
	_, err = syscall.Write(upB[1], []byte("1\r\nB\r\n"))
	require.NoError(t, err)

	require.True(t, l.dispatch([]syscall.EpollEvent{
		{Events: syscall.EPOLLIN, Fd: upToken(under.id)},
		{Events: syscall.EPOLLIN, Fd: upToken(first.id)},
	}))

	want := "1\r\nB\r\n1\r\nA\r\n"
	got := make([]byte, 0, len(want))
	buf := make([]byte, 64)
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < len(want) && time.Now().Before(deadline) {
		n, err := syscall.Read(client[1], buf)
		if err == syscall.EAGAIN {
			time.Sleep(time.Millisecond)
			continue
		}
		require.NoError(t, err)
		got = append(got, buf[:n]...)
	}
	require.Equal(t, want, string(got))
	require.False(t, first.res.FirstByte.IsZero(), "a stream's first bytes are recorded")
	require.Nil(t, l.later[:1][0].s, "the loop keeps no stream after its batch")
}
