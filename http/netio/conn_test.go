package netio_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/http/netio"
	"github.com/lmproxy/lmproxy/proxytest/goroutines"
)

// pair returns both ends of a loopback TCP connection, the client's end wrapped.
func pair(t *testing.T) (wrapped, peer net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	p := <-accepted
	require.NotNil(t, p)
	w := netio.Wrap(c)
	t.Cleanup(func() { w.Close(); p.Close() })
	return w, p
}

func TestWrapKeepsOtherConnections(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	assert.Same(t, a, netio.Wrap(a))
}

func TestLargeWriteWaitsForTheReader(t *testing.T) {
	w, p := pair(t)
	// Far more than the socket buffers hold: Write must wait for the peer to drain them.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<20)
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(p)
		got <- b
	}()
	n, err := w.Write(payload)
	require.NoError(t, err)
	assert.Equal(t, len(payload), n)
	w.(interface{ CloseWrite() error }).CloseWrite()
	select {
	case b := <-got:
		assert.True(t, bytes.Equal(payload, b), "the peer got other bytes")
	case <-time.After(10 * time.Second):
		t.Fatal("the peer did not get the payload")
	}
}

func TestReadWaitsForDataThenSeesEOF(t *testing.T) {
	w, p := pair(t)
	go func() {
		time.Sleep(20 * time.Millisecond) // the read must wait in the netpoller, not spin
		p.Write([]byte("hello"))
		p.Close()
	}()
	b, err := io.ReadAll(w)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(b))
	n, err := w.Read(make([]byte, 8))
	assert.Equal(t, 0, n)
	assert.Equal(t, io.EOF, err)
}

// WaitRead waits for bytes without taking them, and sees the end of the stream as something to
// read too.
func TestWaitReadWaitsWithoutReading(t *testing.T) {
	w, p := pair(t)
	go func() {
		time.Sleep(20 * time.Millisecond) // the wait must be in the netpoller, not spin
		p.Write([]byte("hello"))
	}()
	require.NoError(t, w.(*netio.Conn).WaitRead())
	b := make([]byte, 8)
	n, err := w.Read(b)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(b[:n]), "the wait took nothing")

	p.Close()
	require.NoError(t, w.(*netio.Conn).WaitRead())
	_, err = w.Read(b)
	assert.Equal(t, io.EOF, err)
}

// A deadline ends a wait as it ends a read.
func TestWaitReadDeadline(t *testing.T) {
	w, _ := pair(t)
	require.NoError(t, w.SetReadDeadline(time.Now().Add(30*time.Millisecond)))
	err := w.(*netio.Conn).WaitRead()
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
}

func TestReadDeadline(t *testing.T) {
	w, _ := pair(t)
	require.NoError(t, w.SetReadDeadline(time.Now().Add(30*time.Millisecond)))
	_, err := w.Read(make([]byte, 8))
	require.Error(t, err)
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	assert.True(t, ne.Timeout())
	var oe *net.OpError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, "read", oe.Op)
}

// Close ends a read, or a WaitRead, that waits for the peer.
func TestCloseEndsABlockedRead(t *testing.T) {
	for name, wait := range map[string]func(net.Conn) error{
		"Read": func(c net.Conn) error {
			_, err := c.Read(make([]byte, 8))
			return err
		},
		"WaitRead": func(c net.Conn) error { return c.(*netio.Conn).WaitRead() },
	} {
		t.Run(name, func(t *testing.T) {
			w, _ := pair(t)
			done := make(chan error, 1)
			go func() { done <- wait(w) }()
			// Close only once the reader is parked, so Close is what ends it.
			deadline := time.Now().Add(5 * time.Second)
			for !goroutines.WaitingForIO() {
				require.True(t, time.Now().Before(deadline), "the read never waited")
				time.Sleep(time.Millisecond)
			}
			w.Close()
			select {
			case err := <-done:
				assert.ErrorIs(t, err, net.ErrClosed)
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not end the read")
			}
		})
	}
}

func TestWriteAfterResetIsASyscallError(t *testing.T) {
	w, p := pair(t)
	p.(*net.TCPConn).SetLinger(0)
	p.Close() // an RST
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		_, err = w.Write([]byte("x"))
	}
	require.Error(t, err)
	var se *os.SyscallError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "write", se.Syscall)
	var oe *net.OpError
	require.ErrorAs(t, err, &oe)
	assert.False(t, errors.Is(err, net.ErrClosed))
}

// A read and a write on a wrapped connection allocate nothing: they are on every request's path.
func TestReadWriteAllocateNothing(t *testing.T) {
	w, p := pair(t)
	msg, buf := []byte("ping"), make([]byte, 16)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(p, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Write(msg); err != nil {
			t.Fatal(err)
		}
		if err := w.(*netio.Conn).WaitRead(); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(w, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// answerPings answers each 4-byte request on p with "pong" at once, until p fails.
func answerPings(p net.Conn) {
	buf, pong := make([]byte, 4), []byte("pong")
	for {
		if _, err := io.ReadFull(p, buf); err != nil {
			return
		}
		if _, err := p.Write(pong); err != nil {
			return
		}
	}
}

// WriteWaitRead returns each answer of a peer that answers as soon as it has the request, 2,000
// times in a row, and leaves the answer for the read. (That the write is made after the netpoller's
// reset, so that no answer can come unseen, is by construction: no timing a test can force puts an
// answer between a write and the wait after it.)
func TestWriteWaitReadSeesAnImmediateAnswer(t *testing.T) {
	w, p := pair(t)
	go answerPings(p)
	c, buf := w.(*netio.Conn), make([]byte, 4)
	for i := range 2000 {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		n, err := c.WriteWaitRead([]byte("ping"))
		require.NoError(t, err, "exchange %d", i)
		require.Equal(t, 4, n)
		_, err = io.ReadFull(c, buf)
		require.NoError(t, err)
		require.Equal(t, "pong", string(buf))
	}
}

// A request larger than the socket buffers is written whole before the wait, which still ends
// only when the answer comes.
func TestWriteWaitReadLargeRequest(t *testing.T) {
	w, p := pair(t)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<20)
	answered := make(chan struct{})
	go func() {
		io.ReadFull(p, make([]byte, len(payload)))
		time.Sleep(20 * time.Millisecond) // the wait must be in the netpoller, not spin
		close(answered)
		p.Write([]byte("done"))
	}()
	n, err := w.(*netio.Conn).WriteWaitRead(payload)
	require.NoError(t, err)
	assert.Equal(t, len(payload), n)
	select {
	case <-answered:
	default:
		t.Fatal("WriteWaitRead returned before the answer")
	}
	b := make([]byte, 8)
	n, err = w.Read(b)
	require.NoError(t, err)
	assert.Equal(t, "done", string(b[:n]))
}

// The wait ends at the read deadline, and at the peer's end, as WaitRead's does; a write to a
// connection the peer reset is a write error.
func TestWriteWaitReadEnds(t *testing.T) {
	w, p := pair(t)
	require.NoError(t, w.SetReadDeadline(time.Now().Add(30*time.Millisecond)))
	n, err := w.(*netio.Conn).WriteWaitRead([]byte("ping"))
	assert.Equal(t, 4, n, "the request went")
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)

	require.NoError(t, w.SetReadDeadline(time.Time{}))
	go func() {
		io.ReadFull(p, make([]byte, 8))
		p.Close()
	}()
	_, err = w.(*netio.Conn).WriteWaitRead([]byte("ping"))
	require.NoError(t, err)
	_, err = w.Read(make([]byte, 1))
	assert.Equal(t, io.EOF, err)

	var werr error
	deadline := time.Now().Add(5 * time.Second)
	for werr == nil && time.Now().Before(deadline) {
		_, werr = w.(*netio.Conn).WriteWaitRead([]byte("x"))
	}
	var se *os.SyscallError
	require.ErrorAs(t, werr, &se)
	assert.Equal(t, "write", se.Syscall)
}

// WriteWaitRead allocates nothing: it is on every exchange's path.
func TestWriteWaitReadAllocatesNothing(t *testing.T) {
	w, p := pair(t)
	go answerPings(p)
	c, msg, buf := w.(*netio.Conn), []byte("ping"), make([]byte, 4)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := c.WriteWaitRead(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	})
	assert.Zero(t, allocs)
}

// A connection whose peer closed it before the call (a replica's idle connection, say) still ends
// the wait: the write draws a reset, which wakes it.
func TestWriteWaitReadAfterThePeerClosed(t *testing.T) {
	w, p := pair(t)
	p.Close()
	c := w.(*netio.Conn)
	require.NoError(t, c.WaitRead()) // the close was seen before the call
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err := c.WriteWaitRead([]byte("ping"))
	require.NoError(t, err)
	_, err = c.Read(make([]byte, 1))
	assert.Error(t, err, "EOF or a reset")
	assert.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the wait ran to its deadline")
}
