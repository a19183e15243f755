package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// requestError is a request the server refuses before any handler sees it.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(msg string) error { return &requestError{http.StatusBadRequest, msg} }

// readRequest reads one request head and sets up its body.
func (c *conn) readRequest() (*http.Request, *body, error) {
	c.lr.n, c.lr.limited = c.s.maxHeaderBytes()+4096, true // net/http's slack over the limit
	req, b, err := c.readHead()
	c.lr.limited = false
	if errors.Is(err, errHeadTooLarge) {
		return nil, nil, &requestError{http.StatusRequestHeaderFieldsTooLarge, "request header fields too large"}
	}
	return req, b, err
}

func (c *conn) readHead() (*http.Request, *body, error) {
	line, h, whole := wholeHead(c.br, c.s.maxHeaderBytes(), c.spareRequestHeader)
	if whole {
		c.spareRequestHeader = nil
	}
	tp := textproto.Reader{R: c.br}
	if !whole {
		var err error
		line, err = tp.ReadLine()
		if err == nil && line == "" {
			// An empty line before the request line, which some clients send after a POST body,
			// is ignored (RFC 9112 §2.2).
			line, err = tp.ReadLine()
		}
		if err != nil {
			return nil, nil, err
		}
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !validMethod(method) {
		return nil, nil, badRequest("malformed request line")
	}
	major, minor, ok := http.ParseHTTPVersion(proto)
	if !ok {
		return nil, nil, badRequest("malformed HTTP version")
	}
	if major != 1 {
		return nil, nil, &requestError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	}
	u, err := parseTarget(method, target)
	if err != nil {
		return nil, nil, badRequest("malformed request target")
	}
	if !whole {
		if h, err = readHeader(&tp); err != nil {
			return nil, nil, err
		}
	}
	// The request is put together here and copied once, with its context, into the one the handler
	// gets: http.Request's context can only be set by such a copy.
	req := &http.Request{
		Method:     method,
		URL:        u,
		Proto:      proto,
		ProtoMajor: major,
		ProtoMinor: minor,
		Header:     h,
		RequestURI: target,
		RemoteAddr: c.remote,
		TLS:        c.tls,
	}
	hosts := h["Host"]
	switch {
	case len(hosts) > 1:
		return nil, nil, badRequest("too many Host headers")
	case len(hosts) == 0 && minor >= 1:
		return nil, nil, badRequest("missing required Host header")
	case len(hosts) == 1 && !ValidHost(hosts[0]):
		return nil, nil, badRequest("malformed Host header")
	}
	req.Host = u.Host
	if req.Host == "" && len(hosts) == 1 {
		req.Host = hosts[0]
	}
	delete(h, "Host")
	req.Close = wantsClose(minor, h["Connection"])

	b, err := c.newBody(req)
	if err != nil {
		return nil, nil, err
	}
	ctx := c.leanCtx
	if ctx == nil {
		ctx = newRequestContext()
	}
	c.leanCtx = nil
	return req.WithContext(ctx), b, nil
}

// readHeader reads a header with textproto, and refuses what textproto lets through but a front end
// may read otherwise.
func readHeader(tp *textproto.Reader) (http.Header, error) {
	mh, err := tp.ReadMIMEHeader()
	if err != nil {
		if errors.Is(err, errHeadTooLarge) {
			return nil, err
		}
		var pe textproto.ProtocolError
		if errors.As(err, &pe) {
			return nil, badRequest("malformed header")
		}
		return nil, err
	}
	h := http.Header(mh)
	for k, vv := range h {
		if !ValidFieldName(k) {
			// textproto lets a space through ("Content-Length : 5"): a name that is not the
			// header a front end may take it for.
			return nil, badRequest("invalid header name")
		}
		for _, v := range vv {
			if !ValidFieldValue(v) {
				return nil, badRequest("invalid header value")
			}
		}
	}
	return h, nil
}

// wholeHead parses the common request head in place, with one string for the request line and
// every value instead of one per line: all of it already in br's buffer and within max bytes,
// every line ending in CRLF, no folded line, every name a token, every value free of control
// characters. It consumes the head. Anything else (a doubtful byte included) returns whole false
// and consumes nothing, for textproto to read as before. h, when not nil, is an empty map to fill;
// it is left empty when the head is declined.
func wholeHead(br *bufio.Reader, max int64, h http.Header) (line string, _ http.Header, whole bool) {
	buf, _ := br.Peek(br.Buffered())
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	// A head that starts with a line end has an empty line before its request line: textproto's
	// path skips it.
	if end <= 0 || buf[0] == '\r' || int64(end) > max {
		return "", nil, false
	}
	raw := buf[:end+2] // each line with its CRLF
	crlf := bytes.Count(raw, []byte("\r\n"))
	if bytes.Count(raw, []byte("\r")) != crlf || bytes.Count(raw, []byte("\n")) != crlf {
		return "", nil, false
	}
	head := string(raw)
	line, rest, _ := strings.Cut(head, "\r\n")
	values := make([]string, 0, crlf-1)
	if h == nil {
		h = make(http.Header, crlf-1)
	}
	for len(rest) > 0 {
		var l string
		l, rest, _ = strings.Cut(rest, "\r\n")
		name, value, ok := strings.Cut(l, ":")
		value = strings.Trim(value, " \t")
		// A folded line starts with a space: not a name.
		if !ok || !ValidFieldName(name) || !ValidFieldValue(value) {
			clear(h) // the lines before this one
			return "", nil, false
		}
		key := textproto.CanonicalMIMEHeaderKey(name) // no allocation for the common names
		if vv := h[key]; vv != nil {
			h[key] = append(vv, value)
		} else {
			values = append(values, value)
			h[key] = values[len(values)-1 : len(values) : len(values)]
		}
	}
	br.Discard(end + 4)
	return line, h, true
}

// parseTarget parses a request target: origin form, absolute form, or * for OPTIONS.
func parseTarget(method, target string) (*url.URL, error) {
	if target == "*" && method == http.MethodOptions {
		return &url.URL{Path: "*"}, nil
	}
	if target == "" || method == http.MethodConnect {
		return nil, errors.New("unsupported target")
	}
	if plainPath(target) {
		return &url.URL{Path: target}, nil // what url.ParseRequestURI makes of it, without its parse
	}
	return url.ParseRequestURI(target)
}

// plainPath reports whether target is an absolute path of unreserved characters and slashes only:
// no query, no escape, nothing url.ParseRequestURI would read otherwise than as the path itself.
func plainPath(target string) bool {
	if target[0] != '/' {
		return false
	}
	for i := 1; i < len(target); i++ {
		switch b := target[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		case b == '/', b == '-', b == '.', b == '_', b == '~':
		default:
			return false
		}
	}
	return true
}

// newBody sets up req's body from its framing headers (RFC 9112 §6).
func (c *conn) newBody(req *http.Request) (*body, error) {
	h := req.Header
	b := &body{c: c}
	te, cl := h["Transfer-Encoding"], h["Content-Length"]
	switch {
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(textproto.TrimString(te[0]), "chunked") {
			return nil, &requestError{http.StatusNotImplemented, "unsupported transfer encoding"}
		}
		if len(cl) > 0 {
			return nil, badRequest("both Transfer-Encoding and Content-Length")
		}
		b.chunked = true
		b.cr = httputil.NewChunkedReader(c.br)
		req.ContentLength = -1
		req.TransferEncoding = []string{"chunked"}
		delete(h, "Transfer-Encoding") // as net/http: it is in req.TransferEncoding
		if req.ProtoMinor == 0 {
			// HTTP/1.0 has no Transfer-Encoding: others may frame this message otherwise, so the
			// connection ends after it (RFC 9112 §6.1).
			req.Close = true
		}
	case len(cl) > 0:
		n, err := parseContentLength(cl)
		if err != nil {
			return nil, err
		}
		b.n = n
		req.ContentLength = n
		if len(cl) > 1 {
			h["Content-Length"] = cl[:1] // as net/http: identical copies are one
		}
	}
	if !b.chunked && b.n == 0 {
		b.eof = true
		req.Body = http.NoBody
	} else {
		req.Body = b
		if expect := h["Expect"]; len(expect) > 0 {
			if len(expect) != 1 || !strings.EqualFold(expect[0], "100-continue") {
				return nil, &requestError{http.StatusExpectationFailed, "unsupported Expect"}
			}
			b.needContinue = req.ProtoMinor >= 1
		}
	}
	return b, nil
}

// parseContentLength accepts one decimal length, or several identical ones.
func parseContentLength(vv []string) (int64, error) {
	first := textproto.TrimString(vv[0])
	for _, v := range vv[1:] {
		if textproto.TrimString(v) != first {
			return 0, badRequest("conflicting Content-Length")
		}
	}
	if first == "" || first[0] == '+' || first[0] == '-' {
		return 0, badRequest("bad Content-Length")
	}
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		return 0, badRequest("bad Content-Length")
	}
	return n, nil
}

// wantsClose reads the Connection header: HTTP/1.1 keeps the connection unless told "close",
// HTTP/1.0 closes it unless told "keep-alive".
func wantsClose(minor int, conn []string) bool {
	keepAlive := false
	for _, v := range conn {
		for _, f := range strings.Split(v, ",") {
			f = textproto.TrimString(f)
			if strings.EqualFold(f, "close") {
				return true
			}
			if strings.EqualFold(f, "keep-alive") {
				keepAlive = true
			}
		}
	}
	return minor == 0 && !keepAlive
}

func validMethod(m string) bool { return ValidFieldName(m) }

// ValidFieldName reports whether a header name is a token (RFC 9110 §5.1), as net/http requires.
func ValidFieldName[T ~string | ~[]byte](k T) bool {
	if len(k) == 0 {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !isTokenByte(k[i]) {
			return false
		}
	}
	return true
}

func isTokenByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

// ValidFieldValue reports whether a header value holds no control character but tab (RFC 9110 §5.5).
func ValidFieldValue[T ~string | ~[]byte](v T) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; b < ' ' && b != '\t' || b == 0x7f {
			return false
		}
	}
	return true
}

// ValidHost refuses what cannot be part of a host[:port] (net/http's check, simplified).
func ValidHost[T ~string | ~[]byte](h T) bool {
	for i := 0; i < len(h); i++ {
		b := h[i]
		if b <= ' ' || b == 0x7f || b == '/' || b == '\\' || b == '"' || b == '<' || b == '>' {
			return false
		}
	}
	return true
}

// body is a request body on the connection's read buffer.
type body struct {
	c            *conn
	w            *response
	n            int64 // bytes left, without chunking
	chunked      bool
	cr           io.Reader
	eof          bool
	needContinue bool // the client waits for "100 Continue" before it sends the body
	err          error
}

func (b *body) Read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.needContinue {
		b.needContinue = false
		if b.w != nil && !b.w.committed {
			bw := b.c.writer()
			bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			if err := bw.Flush(); err != nil {
				b.err = err
				return 0, err
			}
		}
	}
	var n int
	var err error
	if b.chunked {
		n, err = b.cr.Read(p)
		if err == io.EOF {
			err = b.readTrailer()
		}
	} else {
		if int64(len(p)) > b.n {
			p = p[:b.n]
		}
		n, err = b.c.br.Read(p)
		b.n -= int64(n)
		if b.n == 0 {
			err = io.EOF
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	if err == io.EOF {
		b.eof = true
		b.c.releaseReaderIfEmpty()
	} else if err != nil {
		b.err = err
	}
	return n, err
}

// readTrailer reads a chunked body's trailer section, which nothing uses, and returns io.EOF.
func (b *body) readTrailer() error {
	tp := textproto.Reader{R: b.c.br}
	if _, err := tp.ReadMIMEHeader(); err != nil {
		return badRequest("malformed trailer")
	}
	return io.EOF
}

// Close does nothing: what the handler leaves unread is dropped after it returns.
func (b *body) Close() error { return nil }

// discard reads and drops what the handler left unread, up to maxDiscard; it reports whether the
// connection can carry another request.
func (b *body) discard() bool {
	if b.eof {
		return true
	}
	if b.err != nil || b.needContinue || !b.chunked && b.n > maxDiscard {
		return false
	}
	n, err := io.Copy(io.Discard, io.LimitReader(b, maxDiscard+1))
	return err == nil && n <= maxDiscard && b.eof
}

// refuse answers a request the server could not read, as net/http does, and the connection closes;
// a connection that failed or timed out is just closed.
func (c *conn) refuse(err error) {
	var re *requestError
	if !errors.As(err, &re) {
		return
	}
	text := strconv.Itoa(re.status) + " " + http.StatusText(re.status)
	bw := c.writer()
	bw.WriteString(StatusLine(re.status))
	bw.WriteString("Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")
	bw.WriteString(text + ": " + re.msg)
	bw.Flush()
	c.linger = true // the rest of the request may follow
	if c.s.Refused != nil {
		var elapsed time.Duration
		if !c.headAt.IsZero() {
			elapsed = time.Since(c.headAt)
		}
		c.s.Refused(c.remote, re.status, re.msg, elapsed)
	}
}
