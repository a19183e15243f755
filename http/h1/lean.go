package h1

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"runtime/debug"
)

// LeanRequest is a request offered to Server.Lean before any http.Request is made of it: its head
// and what followed it, as they sit in the connection's read buffer. The head is checked as
// wholeHead checks one (CRLF line ends only, every name a token, every value free of control
// characters, within MaxHeaderBytes); the rest (the request line, the framing, the body) is the
// hook's to read. Nothing of it may be kept after the hook returns.
type LeanRequest struct {
	Head   []byte // the request line and the header lines, each with its CRLF
	Rest   []byte // the buffered bytes after the head's blank line: the body, or its start
	c      *conn
	ctx    *requestContext
	handed any
}

// Context is the request's: cancelled when the client hangs up or the server's Close cuts the
// connection. A request handed over keeps it.
func (r *LeanRequest) Context() context.Context { return r.ctx }

// RemoteAddr is the client's address, as http.Request.RemoteAddr.
func (r *LeanRequest) RemoteAddr() string { return r.c.remote }

// TLS reports whether the connection is TLS.
func (r *LeanRequest) TLS() bool { return r.c.tls != nil }

// Closing reports whether the server is shutting down: its answers then close their connections.
func (r *LeanRequest) Closing() bool { return r.c.s.isClosing() }

// Cut reports whether the server's Close cut the connection.
func (r *LeanRequest) Cut() bool { return r.c.cut.Load() }

// Writer is the connection's write buffer, for the whole answer; Flush sends it.
func (r *LeanRequest) Writer() *bufio.Writer { return r.c.writer() }

// HandOver has the request served as any other after the hook returns: read again from the buffer
// into an http.Request whose context (the same as Context's) carries v, for HandedOver. A hook
// that started on a request and cannot finish it gives what it did over this way. The server
// reads every head the hook is offered; the hook hands over only requests whose framing it read
// as the server does (one Content-Length, no Transfer-Encoding or Expect), so that v always
// reaches Handler.
func (r *LeanRequest) HandOver(v any) { r.handed = v }

// HandedOver returns what a lean hook handed over with the request of ctx, or nil.
func HandedOver(ctx context.Context) any {
	if c, ok := ctx.(*requestContext); ok {
		return c.handed
	}
	return nil
}

// lean offers the buffered request to the Lean hook. done says the hook served it, keep that the
// connection may carry another request. When not done, the request is read as any other, with
// c.leanCtx as its context.
func (c *conn) lean() (done, keep bool) {
	head, rest, ok := leanHead(c.br, c.s.maxHeaderBytes())
	if !ok {
		return false, false
	}
	ctx := newRequestContext()
	c.running(ctx)
	r := &c.leanReq // the connection's: a request of its own would be an allocation each time
	*r = LeanRequest{Head: head, Rest: rest, c: c, ctx: ctx}
	n, ok := c.runLean(r)
	handed := r.handed
	*r = LeanRequest{} // nothing of the buffer is kept
	gone := c.stopped()
	if !ok {
		ctx.cancel()
		return true, false
	}
	if n == 0 {
		ctx.handed = handed
		c.leanCtx = ctx
		return false, false
	}
	ctx.cancel()
	c.br.Discard(n)
	c.releaseReaderIfEmpty()
	var err error
	if c.bw != nil {
		err = c.bw.Flush()
		c.releaseWriter()
	}
	return true, err == nil && !gone && !c.cut.Load() && !c.s.isClosing()
}

// runLean runs the hook, recovering a panic as serveHandler does: the connection is then closed.
func (c *conn) runLean(r *LeanRequest) (n int, ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				c.s.logf("h1: panic serving %s: %v\n%s", c.remote, v, debug.Stack())
			}
			if c.bw != nil {
				c.releaseWriter()
			}
			ok = false
		}
	}()
	return c.s.Lean(r), true
}

// leanHead returns the head at the start of br's buffer and what follows its blank line, when the
// head is whole there and passes wholeHead's checks.
func leanHead(br *bufio.Reader, max int64) (head, rest []byte, ok bool) {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end <= 0 || buf[0] == '\r' || int64(end) > max {
		return nil, nil, false
	}
	head = buf[:end+2]
	crlf := bytes.Count(head, []byte("\r\n"))
	if bytes.Count(head, []byte("\r")) != crlf || bytes.Count(head, []byte("\n")) != crlf {
		return nil, nil, false
	}
	_, lines, _ := bytes.Cut(head, []byte("\r\n"))
	for len(lines) > 0 {
		var l []byte
		l, lines, _ = bytes.Cut(lines, []byte("\r\n"))
		name, value, found := bytes.Cut(l, []byte(":"))
		if !found || !ValidFieldName(name) || !ValidFieldValue(value) {
			return nil, nil, false
		}
	}
	return head, buf[end+4:], true
}
