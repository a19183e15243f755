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
	rd, wr   rawOp
	readable func(uintptr) bool // WaitRead's function for RawConn.Read, made once
	peeked   bool               // WaitRead looked once and found nothing
	ask      rawOp              // WriteWaitRead's write
	asked    bool               // WriteWaitRead wrote all of its bytes and waits
}

// rawOp is one direction of a Conn: the function RawConn runs, and what it works on. Both are made
// once per connection, so a call allocates nothing.
type rawOp struct {
	wait func(func(uintptr) bool) error // RawConn's Read or Write
	fn   func(uintptr) bool
	buf  []byte
	n    int
	err  error
}

// do runs the operation on p and returns what it did; a RawConn error (deadline, closed) wins.
func (o *rawOp) do(p []byte) (int, error) {
	o.buf = p
	err := o.wait(o.fn)
	n, oerr := o.n, o.err
	o.buf, o.n, o.err = nil, 0, nil
	if err == nil {
		err = oerr
	}
	return n, err
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
	x := &Conn{TCPConn: tc}
	x.rd = rawOp{wait: rc.Read, fn: x.read}
	x.wr = rawOp{wait: rc.Write, fn: x.write}
	x.readable = x.peek
	x.ask = rawOp{wait: rc.Read, fn: x.writeThenWait}
	return x
}

// WaitReadable waits until c has something to read, as Conn.WaitRead does, when c is a Conn;
// for any other connection (TLS, say) it returns at once and the caller's read does the waiting.
func WaitReadable(c net.Conn) error {
	if x, ok := c.(*Conn); ok {
		return x.WaitRead()
	}
	return nil
}

// WriteWaitRead writes p to c and, when c is a Conn, waits as Conn.WriteWaitRead does (waited
// true); for any other connection it only writes, and the caller's read does the waiting.
func WriteWaitRead(c net.Conn, p []byte) (n int, waited bool, err error) {
	if x, ok := c.(*Conn); ok {
		n, err = x.WriteWaitRead(p)
		return n, true, err
	}
	n, err = c.Write(p)
	return n, false, err
}

// WaitRead waits until the connection has something to read (bytes, its end, or an error) without
// reading it, so that a caller can wait for a request or an answer without holding a read buffer.
// Deadlines and Close end the wait as they end a Read.
func (c *Conn) WaitRead() error {
	c.peeked = false
	if err := c.rd.wait(c.readable); err != nil {
		return c.opError("read", err)
	}
	return nil
}

// peek is WaitRead's function for RawConn.Read: false means wait until the socket is readable.
// Called again, the netpoller woke it for something to read: a second peek would only cost a
// system call per wait (and a rare wake-up with nothing behind it leaves the read to wait).
func (c *Conn) peek(fd uintptr) bool {
	if c.peeked {
		return true
	}
	for {
		switch Peek(int(fd)) {
		case syscall.EINTR:
		case syscall.EAGAIN:
			c.peeked = true
			return false
		default:
			return true
		}
	}
}

// WriteWaitRead writes all of p, as Write does, then waits as WaitRead does, for an exchange's
// answer. The wait needs no peek: the write is made inside the wait, after the netpoller forgot
// what it saw before, so an answer the write leads to wakes it however soon it comes. Bytes that
// came before the call do not: the caller knows the peer has nothing to say until it is asked (a
// replica's connection between requests), where a server's connection to a client that may
// pipeline is not. When the socket takes only part of p, the rest goes the usual way.
func (c *Conn) WriteWaitRead(p []byte) (int, error) {
	c.asked = false
	n, err := c.ask.do(p)
	if err != nil {
		op := "read"
		if n < len(p) {
			op = "write"
		}
		return n, c.opError(op, err)
	}
	if n < len(p) {
		m, err := c.Write(p[n:])
		if err != nil {
			return n + m, err
		}
		return len(p), c.WaitRead()
	}
	return n, nil
}

// writeThenWait is WriteWaitRead's function for RawConn.Read: called first, it writes and asks to
// wait; called again, the netpoller woke it for something to read. It stops at a socket that takes
// no more, for Write to go on with.
func (c *Conn) writeThenWait(fd uintptr) bool {
	if c.asked {
		return true
	}
	if writeAll(fd, &c.ask) || c.ask.err != nil {
		return true
	}
	c.asked = true
	return false
}

func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := c.rd.do(p)
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
		n, err := Read(int(fd), c.rd.buf)
		switch err {
		case nil:
			c.rd.n = n
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			c.rd.err = err
			return true
		}
	}
}

func (c *Conn) Write(p []byte) (int, error) {
	n, err := c.wr.do(p)
	if err != nil {
		return n, c.opError("write", err)
	}
	return n, nil
}

// write is the Write function for RawConn.Write: it writes all of buf, or asks to wait.
func (c *Conn) write(fd uintptr) bool { return !writeAll(fd, &c.wr) }

// writeAll writes what is left of o.buf, counting it in o.n; it stops at an error, kept in o.err,
// and reports blocked when the socket takes no more for now.
func writeAll(fd uintptr, o *rawOp) (blocked bool) {
	for o.n < len(o.buf) {
		n, err := Write(int(fd), o.buf[o.n:])
		switch err {
		case nil:
			o.n += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return true
		default:
			o.err = err
			return false
		}
	}
	return false
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
