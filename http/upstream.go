package http

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
	"github.com/lmproxy/lmproxy/http/netio"
)

// upstream is the one connection pool that every request to a replica goes through. It is a small
// HTTP/1.1 client of its own rather than http.Transport: the exchange runs on the handler's goroutine,
// where Transport hands each request to two goroutines per connection (a writer and a reader). With
// thousands of open streams those goroutines' stacks and the hand-offs between them cost more than
// the proxy's real work (docs/performance.md has the figures).
type upstream struct {
	timeout time.Duration // --upstream-timeout; 0 = none
	dialer  net.Dialer
	slots   chan struct{} // --max-conns; nil = no limit
	perHost int           // --max-conns-per-host; 0 = no limit

	mu    sync.Mutex
	hosts map[string]*hostConns
}

// hostConns are one replica's connections: the idle ones, how many are open, and the requests
// waiting for one under --max-conns-per-host.
type hostConns struct {
	idle    []*upConn
	open    int
	limit   int // 0 = no limit
	waiting []chan *upConn
}

const (
	maxIdlePerHost = 4096             // thousands of streams each hold a connection; keep them for reuse
	idleTimeout    = 90 * time.Second // an idle connection older than this is closed, not reused
	// trustIdle: a connection idle for less is reused without the liveness peek (a system call per
	// request): replicas close idle connections after seconds (uvicorn: 5 s), and a reused
	// connection that fails before any answer is retried on a fresh one anyway.
	trustIdle = time.Second
	// readBufferSize holds an answer's head and a few SSE events; it lives as long as the connection.
	readBufferSize = 2 << 10
)

// requestWriters buffer one request's head and body while it is written.
var (
	requestWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	upReaders      = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}
)

// upConn is one connection to a replica. It has no write buffer of its own: a request is written
// through a pooled one, so an open stream holds only its read buffer.
type upConn struct {
	net.Conn
	key    string
	host   *hostConns
	br     *bufio.Reader
	fd     int // the socket's descriptor, for the relay; -1 under TLS
	reused bool
	idleAt time.Time
	global bool  // holds a place under --max-conns
	ask    asker // what exchange writes its request through
}

// asker writes a request to a replica's connection. The last write of a request, once last is set,
// waits for the answer too (netio.WriteWaitRead): the wait then needs no peek of its own.
type asker struct {
	net.Conn
	last, waited bool
}

func (a *asker) Write(p []byte) (n int, err error) {
	if !a.last {
		return a.Conn.Write(p)
	}
	n, a.waited, err = netio.WriteWaitRead(a.Conn, p)
	return n, err
}

// dialError marks a failure to reach a replica: nothing of the request was sent, so it may be retried
// on another replica.
type dialError struct{ err error }

// Error is the cause alone: the messages that show it say which replica could not be reached.
func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dialFailed reports whether err, from any client, is a failure to connect (a dial's net.OpError):
// nothing was sent.
func dialFailed(err error) bool {
	op, ok := errors.AsType[*net.OpError](err)
	return ok && op.Op == "dial"
}

// isDialError reports whether err means the request never reached the replica.
func isDialError(err error) bool {
	var d *dialError
	return errors.As(err, &d)
}

func newUpstream(maxConns, maxConnsPerHost int, timeout time.Duration) *upstream {
	u := &upstream{
		timeout: timeout,
		dialer:  net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second},
		perHost: maxConnsPerHost,
		hosts:   map[string]*hostConns{},
	}
	if maxConns > 0 {
		u.slots = make(chan struct{}, maxConns)
	}
	return u
}

// replicaRequest is one request to a replica, written straight from the client's: the client's
// headers go out as they came, less hop-by-hop ones, and the proxy's own after them. Nothing is
// copied into a second http.Request and header map first (3 µs of a short request's path to the
// replica, with the parse of the replica's URL that came with it).
type replicaRequest struct {
	method string
	target string        // the replica's URL as registered: scheme://host[:port][/path]
	uri    string        // the client's path and query
	client *http.Request // whose headers go out; nil for none
	// A lean request's (lean.go) client headers that go out are lines, as they came, and its
	// answer's Header is left nil when the head is a plain one (readAnswerHead).
	lean  bool
	lines []byte
	set   []header // the proxy's headers, written after the client's and replacing any of the same name
	drop  string   // one more of the client's headers not to forward; "" for none
	body  []byte
}

// header is one header line the proxy writes itself.
type header struct{ key, value string }

// RoundTrip sends req and returns the answer. The answer's body gives the connection back to the
// pool when read to its end, and closes it when closed early. ctx cancels the exchange at any point,
// body reading included.
func (u *upstream) RoundTrip(ctx context.Context, req *replicaRequest) (*http.Response, error) {
	dst, err := parseTarget(req.target)
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		c, err := u.get(ctx, dst)
		if err != nil {
			return nil, err
		}
		resp, err := u.exchange(ctx, c, dst, req)
		if err == nil {
			return resp, nil
		}
		c.Close()
		u.release(c)
		// A reused connection the replica closed while it sat idle fails before any answer: nothing
		// was processed, so the request goes again on a fresh connection, once.
		if !c.reused || attempt > 0 || ctx.Err() != nil || !closedByPeer(err) {
			return nil, err
		}
	}
}

// target is where a replica's requests go: the pool's key (scheme://host[:port]), the Host header,
// the name a TLS certificate must carry, and the path the replica's URL puts before every request's.
type target struct {
	key, host, hostname, prefix string
	tls                         bool
}

// parseTarget splits a replica's URL. The common one, scheme://host:port, is split without url.Parse.
func parseTarget(raw string) (target, error) {
	scheme, rest, _ := strings.Cut(raw, "://")
	t := target{key: raw, host: rest, tls: scheme == "https"}
	if (scheme != "http" && scheme != "https") || rest == "" || strings.ContainsAny(rest, "/?#@%") {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return target{}, &dialError{fmt.Errorf("bad replica URL %q", raw)}
		}
		t = target{key: u.Scheme + "://" + u.Host, host: u.Host, prefix: u.EscapedPath(), tls: u.Scheme == "https"}
	}
	t.hostname = t.host
	if h, _, err := net.SplitHostPort(t.host); err == nil {
		t.hostname = h
	}
	t.hostname = strings.TrimSuffix(strings.TrimPrefix(t.hostname, "["), "]")
	return t, nil
}

// exchange writes req on c and reads the answer's head.
func (u *upstream) exchange(ctx context.Context, c *upConn, dst target, req *replicaRequest) (*http.Response, error) {
	stop := afterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	bw := requestWriters.Get().(*bufio.Writer)
	c.ask = asker{Conn: c.Conn}
	bw.Reset(&c.ask)
	writeRequest(bw, dst, req)
	// Wait for the answer without a read buffer: a replica may think for seconds before its head.
	// The request's last write waits for it, when the connection can.
	c.ask.last = c.br == nil
	err := bw.Flush()
	bw.Reset(nil)
	requestWriters.Put(bw)
	if err != nil {
		return fail(err)
	}
	if c.br == nil && !c.ask.waited {
		if err := netio.WaitReadable(c.Conn); err != nil {
			return fail(err)
		}
	}
	resp, pb, err := readAnswerHead(c.reader(), req.method, req.lean)
	if err != nil {
		return fail(err)
	}
	*pb = pooledBody{body: resp.Body, c: c, u: u, ctx: ctx, stop: stop, keep: !resp.Close, lines: pb.lines}
	resp.Body = pb
	return resp, nil
}

// afterFunc is context.AfterFunc through ctx's own AfterFunc when it has one. The h1 server's
// request contexts do: a registration there costs no context, channel or map, on the path of
// every exchange.
func afterFunc(ctx context.Context, f func()) (stop func() bool) {
	if a, ok := ctx.(interface{ AfterFunc(func()) func() bool }); ok {
		return a.AfterFunc(f)
	}
	return context.AfterFunc(ctx, f)
}

// outboundSkip are the client's headers never forwarded: hop-by-hop ones (RFC 9110 §7.6.1), and the
// request's framing and Host, which writeRequest writes itself (the body goes at once: no Expect).
var outboundSkip = append([]string{"Host", "Content-Length", "Expect"}, hopHeaders...)

// writeRequest writes req to dst as HTTP/1.1: the request line, Host, the client's headers less
// hop-by-hop ones (those its Connection header names too) and those the proxy sets, the proxy's,
// the body's length, the body. A line break in a value is made a space, as net/http does; the
// client's headers were checked when its request was read. Errors stay in bw, for its Flush.
func writeRequest(bw *bufio.Writer, dst target, req *replicaRequest) {
	bw.WriteString(req.method)
	bw.WriteByte(' ')
	bw.WriteString(dst.prefix)
	bw.WriteString(req.uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(dst.host)
	bw.WriteString("\r\n")
	if req.client != nil {
		var named []string
		for _, v := range req.client.Header["Connection"] {
			for _, f := range strings.Split(v, ",") {
				if f = textproto.TrimString(f); f != "" {
					named = append(named, textproto.CanonicalMIMEHeaderKey(f))
				}
			}
		}
		for k, vv := range req.client.Header {
			if k == req.drop || slices.Contains(outboundSkip, k) || slices.Contains(named, k) || req.sets(k) {
				continue
			}
			for _, v := range vv {
				writeHeader(bw, k, v)
			}
		}
	}
	bw.Write(req.lines)
	for _, h := range req.set {
		writeHeader(bw, h.key, h.value)
	}
	if len(req.body) > 0 || req.method == http.MethodPost || req.method == http.MethodPut || req.method == http.MethodPatch {
		var n [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(n[:0], int64(len(req.body)), 10))
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
	bw.Write(req.body)
}

// sets reports whether the proxy sets header k itself.
func (req *replicaRequest) sets(k string) bool {
	for _, h := range req.set {
		if h.key == k {
			return true
		}
	}
	return false
}

// writeHeader writes one header line.
func writeHeader(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// closedByPeer reports whether err says the other end closed the connection.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// get returns an idle connection to dst that is still open, or dials one. Under a
// connection limit it waits for a connection another request gives back, or for a place to dial.
func (u *upstream) get(ctx context.Context, dst target) (*upConn, error) {
	key := dst.key
	for {
		u.mu.Lock()
		h := u.host(key)
		var c *upConn
		if n := len(h.idle); n > 0 {
			c = h.idle[n-1]
			h.idle[n-1] = nil
			h.idle = h.idle[:n-1]
		}
		if c == nil && !h.takeSlot() {
			// At --max-conns-per-host: wait for a connection to come back, or for one to close.
			ch := make(chan *upConn, 1)
			h.waiting = append(h.waiting, ch)
			u.mu.Unlock()
			select {
			case c = <-ch:
			case <-ctx.Done():
				u.mu.Lock()
				h.waiting = slices.DeleteFunc(h.waiting, func(w chan *upConn) bool { return w == ch })
				u.mu.Unlock()
				select {
				case c = <-ch: // handed over just before we left: pass it on
					if c != nil {
						u.put(c)
					} else {
						u.freeSlot(h)
					}
				default:
				}
				return nil, ctx.Err()
			}
			if c == nil {
				return u.dial(ctx, dst, h) // a connection closed: its place is ours
			}
		} else {
			u.mu.Unlock()
			if c == nil {
				return u.dial(ctx, dst, h)
			}
		}
		if idle := time.Since(c.idleAt); idle < idleTimeout && (idle < trustIdle || c.alive()) {
			c.reused = true
			return c, nil
		}
		c.Close()
		u.release(c)
	}
}

// takeSlot takes a place under --max-conns-per-host, if one is free; u.mu is held.
func (h *hostConns) takeSlot() bool {
	if h.limit == 0 || h.open < h.limit {
		h.open++
		return true
	}
	return false
}

// freeSlot gives a place under --max-conns-per-host back, to a waiting request if there is one.
func (u *upstream) freeSlot(h *hostConns) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(h.waiting) > 0 {
		ch := h.waiting[0]
		h.waiting = h.waiting[1:]
		ch <- nil // the waiter dials in this connection's place
		return
	}
	h.open--
}

// host returns the connections of key; u.mu is held.
func (u *upstream) host(key string) *hostConns {
	h := u.hosts[key]
	if h == nil {
		h = &hostConns{limit: u.perHost}
		u.hosts[key] = h
	}
	return h
}

// alive reports whether an idle connection is still open: the replica may have closed it (uvicorn
// closes idle keep-alive connections after 5 s). One non-blocking peek: a read that would block
// means open. A TLS connection is not peeked; a stale one is retried on a fresh connection instead.
func (c *upConn) alive() bool {
	if c.br != nil && c.br.Buffered() > 0 {
		return false // bytes nobody asked for: the connection is out of step
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	if err := rc.Read(func(fd uintptr) bool {
		open = netio.PeekOpen(fd)
		return true
	}); err != nil {
		return false
	}
	return open
}

// dial opens a connection to key, in a place under --max-conns-per-host already taken for it, after
// waiting for one under --max-conns.
func (u *upstream) dial(ctx context.Context, dst target, h *hostConns) (*upConn, error) {
	c := &upConn{key: dst.key, host: h}
	if u.slots != nil {
		select {
		case u.slots <- struct{}{}:
		default:
			// Every place is taken. Idle connections hold places too: close one rather than wait
			// for a request on another replica that may never come.
			u.closeOneIdle()
			select {
			case u.slots <- struct{}{}:
			case <-ctx.Done():
				u.release(c)
				return nil, ctx.Err()
			}
		}
		c.global = true
	}
	addr := dst.host
	if _, _, err := net.SplitHostPort(addr); err != nil {
		port := "80"
		if dst.tls {
			port = "443"
		}
		addr = net.JoinHostPort(dst.hostname, port)
	}
	conn, err := u.dialer.DialContext(ctx, "tcp", addr)
	if err == nil {
		conn = netio.Wrap(conn)
	}
	if err == nil && dst.tls {
		tc := tls.Client(conn, &tls.Config{ServerName: dst.hostname})
		if err = tc.HandshakeContext(ctx); err != nil {
			conn.Close()
		}
		conn = tc
	}
	if err != nil {
		u.release(c)
		if ctx.Err() != nil {
			return nil, ctx.Err() // the request ended first: not the replica's fault
		}
		return nil, &dialError{err}
	}
	c.Conn = conn
	c.fd = h1.SocketFD(conn)
	return c, nil
}

// reader returns the connection's read buffer, from the pool if it has none.
func (c *upConn) reader() *bufio.Reader {
	if c.br == nil {
		c.br = upReaders.Get().(*bufio.Reader)
		c.br.Reset(c.Conn)
	}
	return c.br
}

// dropReader gives the read buffer back while the connection does not need it: during a relayed
// stream, whose bytes the relay reads from the socket itself. It must be empty.
func (c *upConn) dropReader() {
	c.br.Reset(nil)
	upReaders.Put(c.br)
	c.br = nil
}

// put keeps a connection whose exchange ended cleanly: for a request waiting for one, or for the
// next request.
func (u *upstream) put(c *upConn) {
	c.idleAt = time.Now()
	h := c.host
	u.mu.Lock()
	if len(h.waiting) > 0 {
		ch := h.waiting[0]
		h.waiting = h.waiting[1:]
		ch <- c
		c = nil
	} else if len(h.idle) < maxIdlePerHost {
		h.idle = append(h.idle, c)
		c = nil
	}
	u.mu.Unlock()
	if c != nil {
		c.Close()
		u.release(c)
	}
}

// release gives back the places a closed connection held, once.
func (u *upstream) release(c *upConn) {
	if c.global {
		<-u.slots
		c.global = false
	}
	if c.host != nil {
		h := c.host
		c.host = nil
		u.freeSlot(h)
	}
}

// closeOneIdle closes one idle connection, of any replica, if there is one.
func (u *upstream) closeOneIdle() {
	var c *upConn
	u.mu.Lock()
	for _, h := range u.hosts {
		if n := len(h.idle); n > 0 {
			c = h.idle[0]
			h.idle = slices.Delete(h.idle, 0, 1)
			break
		}
	}
	u.mu.Unlock()
	if c != nil {
		c.Close()
		u.release(c)
	}
}

// close closes every idle connection.
func (u *upstream) close() {
	u.mu.Lock()
	var idle []*upConn
	for _, h := range u.hosts {
		idle = append(idle, h.idle...)
		h.idle = nil
	}
	u.mu.Unlock()
	for _, c := range idle {
		c.Close()
		u.release(c)
	}
}

// pooledBody is an answer's body on a pooled connection: read to its end, the connection goes back
// to the pool; closed before that, or cancelled, the connection is closed.
type pooledBody struct {
	body io.ReadCloser
	c    *upConn
	u    *upstream
	ctx  context.Context
	stop func() bool
	keep bool // the answer allows the connection to be reused
	done bool
	// lines are the answer's header lines as they came, each with its CRLF, when its head was
	// parsed in place (readAnswerHead); "" otherwise.
	lines string
}

func (b *pooledBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		if b.ctx.Err() != nil {
			err = b.ctx.Err() // the deadline we set on cancel is not the replica's doing
		}
		b.finish(false)
	}
	return n, err
}

func (b *pooledBody) Close() error {
	b.finish(false)
	return nil
}

// finish ends the exchange once: the connection is reused only after a clean end that the
// cancellation did not touch.
func (b *pooledBody) finish(clean bool) {
	if b.done {
		return
	}
	b.done = true
	if b.stop() && clean && b.keep {
		// An idle connection holds no read buffer, so that its next request waits without one
		// (a buffer with bytes nobody asked for stays, for alive to see).
		if b.c.br != nil && b.c.br.Buffered() == 0 {
			b.c.dropReader()
		}
		b.u.put(b.c)
		return
	}
	b.c.Close()
	b.u.release(b.c)
}
