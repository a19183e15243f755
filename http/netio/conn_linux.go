package netio

import (
	"io"
	"net"
	"os"
	"syscall"
)

// Conn is a TCP connection whose Read and Write make their system calls through Read and Write
// above, waiting in Go's netpoller when the socket is not ready. Everything else is the
// *net.TCPConn's. One goroutine may read while another writes, as with any net.Conn; two
// concurrent reads (or writes) are serialised by the connection's own locks.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

	rbuf   []byte
	rn     int
	rerr   error
	readFn func(uintptr) bool

	wbuf    []byte
	wn      int
	werr    error
	writeFn func(uintptr) bool
}

// Wrap returns c as a Conn when it is a TCP connection, or c itself.
func Wrap(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	x := &Conn{TCPConn: tc, rc: rc}
	x.readFn = x.read
	x.writeFn = x.write
	return x
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf = p
	err := c.rc.Read(c.readFn)
	n, rerr := c.rn, c.rerr
	c.rbuf, c.rn, c.rerr = nil, 0, nil
	if err == nil {
		err = rerr
	}
	if err != nil {
		return n, c.opError("read", err)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// read is the Read function for RawConn.Read: false means wait until the socket is readable.
func (c *Conn) read(fd uintptr) bool {
	for {
		n, err := Read(int(fd), c.rbuf)
		switch err {
		case nil:
			c.rn = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.rerr = err
			return true
		}
	}
}

func (c *Conn) Write(p []byte) (int, error) {
	c.wbuf, c.wn = p, 0
	err := c.rc.Write(c.writeFn)
	n, werr := c.wn, c.werr
	c.wbuf, c.wn, c.werr = nil, 0, nil
	if err == nil {
		err = werr
	}
	if err != nil {
		return n, c.opError("write", err)
	}
	return n, nil
}

// write is the Write function for RawConn.Write: it writes all of wbuf, or asks to wait.
func (c *Conn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		n, err := Write(int(fd), c.wbuf[c.wn:])
		switch err {
		case nil:
			c.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			c.werr = err
			return true
		}
	}
	return true
}

// opError wraps err as net.Conn's own Read and Write do, so callers can test it the same way
// (errors.Is with os.ErrDeadlineExceeded or net.ErrClosed, net.Error's Timeout).
func (c *Conn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok { // RawConn's, named "raw-read" or "raw-write"
		err = oe.Err
	}
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
