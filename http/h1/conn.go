package h1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lmproxy/lmproxy/http/netio"
)

// A connection holds a read or write buffer only while it uses it: the read buffer while a request
// head and body arrive (and, under TLS, while a keep-alive connection waits for the next one), the
// write buffer from the first byte of an answer to its next flush. An open stream waiting on its
// replica holds neither.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
)

// maxDiscard is how much of a request body the handler left unread is read and dropped to keep the
// connection; with more left the connection is closed instead (net/http's figure).
const maxDiscard = 256 << 10

// connState is where a connection is in its life, for Shutdown.
type connState int

const (
	stateIdle   connState = iota // waiting for the first byte of a request: Shutdown may close it
	stateActive                  // reading or serving a request
	stateClosed
)

// conn is one client connection, served by one goroutine.
type conn struct {
	s      *Server
	rwc    net.Conn // a *tls.Conn under TLS
	raw    net.Conn // the TCP connection
	remote string
	tls    *tls.ConnectionState

	lr limitedReader // what the read buffer reads from: rwc, bounded while a head arrives
	br *bufio.Reader // nil when not held
	bw *bufio.Writer // nil when not held

	// The last request's header maps, emptied for the next one: see keepHeaders.
	spareRequestHeader http.Header
	spareHeader        http.Header

	fd      int
	watchID int32

	linger bool // the client may still be sending what the server did not read: see lingerClose

	headDeadline bool      // the read deadline is ReadHeaderTimeout's, for a head that had not all arrived
	waitDeadline bool      // the read deadline is still the wait's (IdleTimeout's or ReadHeaderTimeout's)
	headAt       time.Time // when a head that had not all arrived with its first bytes began; zero if it had

	mu       sync.Mutex
	state    connState
	ctx      *requestContext // the running request's
	leanCtx  *requestContext // the context of a request the Lean hook did not serve, for its http.Request
	leanReq  LeanRequest     // what the Lean hook is offered
	gone     bool            // the client hung up
	served   bool            // it carried a request
	accepted time.Time

	cut atomic.Bool // Close cut the connection: no deadline may be set after its own
}

func (s *Server) newConn(rwc net.Conn) *conn {
	rwc = netio.Wrap(rwc)
	c := &conn{s: s, rwc: rwc, raw: rwc, remote: rwc.RemoteAddr().String(), fd: -1, accepted: time.Now()}
	if s.TLSConfig != nil {
		c.rwc = tls.Server(rwc, s.TLSConfig)
	}
	c.lr.r = c.rwc
	return c
}

// serve runs the connection: requests one after the other until the client or the server ends it.
func (c *conn) serve() {
	defer c.close()
	if tc, ok := c.rwc.(*tls.Conn); ok {
		if !c.handshake(tc) {
			return
		}
	}
	c.fd = SocketFD(c.raw)
	if h := c.s.hangups; h != nil && c.fd >= 0 {
		c.watchID = h.watch(c, c.fd)
	}
	wait := c.s.ReadHeaderTimeout // for the first request, waiting is part of its head's time
	for {
		if !c.waitForRequest(wait) {
			return
		}
		wait = c.s.IdleTimeout
		if c.s.Lean != nil && c.headAt.IsZero() {
			if done, keep := c.lean(); done {
				if !keep {
					return
				}
				continue
			}
		}
		if c.waitDeadline {
			c.setReadDeadline(time.Time{})
			c.waitDeadline = false
		}
		req, b, err := c.readRequest()
		if err != nil {
			c.refuse(err)
			return
		}
		if !c.handle(req, b) {
			c.linger = !b.eof
			return
		}
	}
}

func (c *conn) handshake(tc *tls.Conn) bool {
	if d := c.s.ReadHeaderTimeout; d > 0 {
		tc.SetDeadline(time.Now().Add(d))
	}
	if err := tc.HandshakeContext(context.Background()); err != nil {
		if !errors.Is(err, io.EOF) {
			c.s.logf("h1: TLS handshake error from %s: %v", c.remote, err)
		}
		return false
	}
	tc.SetDeadline(time.Time{})
	if c.cut.Load() {
		return false
	}
	st := tc.ConnectionState()
	c.tls = &st
	return true
}

// waitForRequest waits up to d (0: forever) for the first byte of a request, as an idle connection
// that Shutdown may close, and reports whether one came.
func (c *conn) waitForRequest(d time.Duration) bool {
	// The deadline before the state: once idle, closeIfIdle's deadline must be the last word.
	if d > 0 {
		c.setReadDeadline(time.Now().Add(d))
	}
	if !c.setState(stateIdle) {
		return false
	}
	// A plain socket waits for its next request without a read buffer: at 2,000 streams their
	// clients' connections were most of the buffers taken at once (one peak of the proxy's memory).
	if c.br == nil && netio.WaitReadable(c.rwc) != nil {
		return false
	}
	br := c.reader()
	if _, err := br.Peek(1); err != nil {
		return false
	}
	c.mu.Lock()
	ok := c.state != stateClosed
	c.state, c.served = stateActive, true
	c.mu.Unlock()
	if !ok {
		return false
	}
	// Most heads arrive whole with their first byte: reading them cannot wait, so they need no
	// deadline of their own (a deadline costs a runtime timer update each time it is set), and the
	// time they take to arrive, which a refusal reports, is taken as zero.
	h := c.s.ReadHeaderTimeout
	c.headAt = time.Time{}
	if (h > 0 || c.s.Refused != nil) && !headBuffered(br) {
		c.headAt = time.Now()
	}
	switch {
	case h > 0 && !c.headAt.IsZero():
		c.setReadDeadline(c.headAt.Add(h))
		c.headDeadline, c.waitDeadline = true, false
	case d > 0:
		// The wait's deadline stands until a request is read (serve clears it): a request the
		// Lean hook serves from the buffer reads nothing, and saves the timer update.
		c.waitDeadline = true
	}
	return true
}

// headBuffered reports whether br holds a whole request head: a line end, then an empty line.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, []byte("\n\r\n")) || bytes.Contains(b, []byte("\n\n"))
}

// handle serves one request and reports whether the connection can carry another.
func (c *conn) handle(req *http.Request, b *body) (keep bool) {
	if c.headDeadline {
		c.setReadDeadline(time.Time{})
		c.headDeadline = false
	}
	ctx := req.Context().(*requestContext) // readHead's
	c.running(ctx)
	reqHeader := req.Header // the map readHead made, whatever the handler puts in req
	w := &response{c: c, req: req, body: b, header: c.takeHeader(), clen: -1}
	b.w = w
	if b.eof {
		c.releaseReaderIfEmpty()
	}
	ok := c.serveHandler(w, req)

	gone := c.stopped()
	aborted := c.cut.Load()
	ctx.cancel()
	if !ok || aborted {
		w.release()
		return false
	}
	if err := w.finish(); err != nil || w.closeAfter || gone {
		return false
	}
	if !b.discard() || c.s.isClosing() {
		return false
	}
	c.keepHeaders(reqHeader, w.header)
	return true
}

const (
	// maxKeptHeader bounds the answer headers kept for the connection's next answer: a small map's
	// size.
	maxKeptHeader = 8
	// maxKeptRequestHeader bounds the request headers kept: clients such as OpenAI's SDKs send a
	// dozen.
	maxKeptRequestHeader = 32
)

// takeHeader returns an empty header map for an answer: the one the connection's last answer left,
// or a new one.
func (c *conn) takeHeader() http.Header {
	h := c.spareHeader
	if h == nil {
		return make(http.Header, maxKeptHeader)
	}
	c.spareHeader = nil
	return h
}

// keepHeaders keeps a finished request's header maps, emptied, for the next request on the
// connection: the handler is done with them (neither a Request nor a ResponseWriter is used after
// ServeHTTP returns), and new maps cost two allocations each. A map that grew past its bound is
// left to the GC.
func (c *conn) keepHeaders(request, answer http.Header) {
	if len(request) <= maxKeptRequestHeader {
		clear(request)
		c.spareRequestHeader = request
	}
	if len(answer) <= maxKeptHeader {
		clear(answer)
		c.spareHeader = answer
	}
}

// serveHandler runs the handler, recovering a panic as net/http does: the connection is closed
// without finishing the answer. It reports whether the handler returned normally.
func (c *conn) serveHandler(w *response, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				c.s.logf("h1: panic serving %s: %v\n%s", c.remote, v, debug.Stack())
			}
			w.release()
			ok = false
		}
	}()
	c.s.Handler.ServeHTTP(w, req)
	return true
}

// running makes ctx the running request's: a hang-up or Close cancels it from now on, and at once
// when the client hung up already.
func (c *conn) running(ctx *requestContext) {
	c.mu.Lock()
	c.ctx = ctx
	gone := c.gone
	c.mu.Unlock()
	if gone {
		ctx.cancel()
	}
}

// stopped undoes running: a hang-up no longer reaches the request. It reports whether the client
// hung up while the request ran.
func (c *conn) stopped() (gone bool) {
	c.mu.Lock()
	c.ctx = nil
	gone = c.gone
	c.mu.Unlock()
	return gone
}

// hangUp cancels the running request, if any: the client closed or reset the connection. The
// watcher calls it from its own goroutine.
func (c *conn) hangUp() {
	c.mu.Lock()
	c.gone = true
	ctx := c.ctx
	c.mu.Unlock()
	if ctx != nil {
		ctx.cancel()
	}
}

// setState moves the connection to st unless it was closed; it reports whether it was not.
func (c *conn) setState(st connState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == stateClosed {
		return false
	}
	c.state = st
	return true
}

// aLongTimeAgo is a deadline that wakes a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

// newConnGrace is how long Shutdown lets a connection that has not sent its first request yet send
// it (net/http's figure): it was accepted before the listener closed, and its client is about to
// ask; closing it would fail a request that was never refused.
const newConnGrace = 5 * time.Second

// closeIfIdle ends the connection if it waits for a request. Only the connection's goroutine closes
// the socket (after disarming its hang-up watch, so that a reused descriptor is never disarmed by
// mistake); others wake it with a deadline in the past.
func (c *conn) closeIfIdle() {
	c.mu.Lock()
	idle := c.state == stateIdle && (c.served || time.Since(c.accepted) > newConnGrace)
	if idle {
		c.state = stateClosed
	}
	c.mu.Unlock()
	if idle {
		c.rwc.SetReadDeadline(aLongTimeAgo)
	}
}

// abort cuts the connection for Close: blocked reads and writes fail, the running request is
// cancelled, and its answer is not ended cleanly — a client must not take a cut stream for a whole
// one. The deadline comes before the cancellation, so the handler cannot write an ending first.
func (c *conn) abort() {
	c.mu.Lock()
	c.state = stateClosed
	c.mu.Unlock()
	c.cut.Store(true)
	c.raw.SetDeadline(aLongTimeAgo)
	c.hangUp()
}

// setReadDeadline sets the read deadline, unless Close cut the connection: a deadline set just
// after abort's would undo it, and the connection would wait for its client instead of ending.
func (c *conn) setReadDeadline(t time.Time) {
	c.rwc.SetReadDeadline(t)
	if c.cut.Load() {
		c.raw.SetDeadline(aLongTimeAgo)
	}
}

func (c *conn) close() {
	c.mu.Lock()
	c.state = stateClosed
	c.mu.Unlock()
	if h := c.s.hangups; h != nil {
		h.forget(c.watchID, c.fd)
	}
	if c.bw != nil {
		c.bw.Flush()
		c.releaseWriter()
	}
	if c.linger {
		c.lingerClose()
	}
	c.rwc.Close()
	if c.br != nil {
		c.releaseReader()
	}
	c.s.untrack(c)
}

// lingerTime bounds lingerClose: net/http's figure for its wait before such a close.
const lingerTime = 500 * time.Millisecond

// lingerClose ends the sending side and reads and drops what the client still sends, until it
// closes its side or lingerTime passes. Closing a socket with unread input resets the connection,
// and the reset can cut the answer short of its end, or destroy what the client did not read of it
// yet (RFC 9112 §9.6).
func (c *conn) lingerClose() {
	if cw, ok := c.rwc.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() != nil {
		return
	}
	c.setReadDeadline(time.Now().Add(lingerTime))
	io.Copy(io.Discard, c.rwc)
}

// reader returns the connection's read buffer, taking one from the pool if needed.
func (c *conn) reader() *bufio.Reader {
	if c.br == nil {
		c.br = readers.Get().(*bufio.Reader)
		c.br.Reset(&c.lr)
	}
	return c.br
}

// releaseReaderIfEmpty gives the read buffer back when it holds no byte of a next request.
func (c *conn) releaseReaderIfEmpty() {
	if c.br != nil && c.br.Buffered() == 0 {
		c.releaseReader()
	}
}

func (c *conn) releaseReader() {
	c.br.Reset(nil)
	readers.Put(c.br)
	c.br = nil
}

// writer returns the connection's write buffer, taking one from the pool if needed.
func (c *conn) writer() *bufio.Writer {
	if c.bw == nil {
		c.bw = writers.Get().(*bufio.Writer)
		c.bw.Reset(c.rwc)
	}
	return c.bw
}

func (c *conn) releaseWriter() {
	c.bw.Reset(nil)
	writers.Put(c.bw)
	c.bw = nil
}

// SocketFD returns the file descriptor of a plain socket connection, or -1 (for TLS, say).
func SocketFD(nc net.Conn) int {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// limitedReader reads from r; while n > 0 is set, at most n bytes, then errHeadTooLarge.
type limitedReader struct {
	r       io.Reader
	n       int64
	limited bool
}

var errHeadTooLarge = errors.New("request head too large")

func (l *limitedReader) Read(p []byte) (int, error) {
	if !l.limited {
		return l.r.Read(p)
	}
	if l.n <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
