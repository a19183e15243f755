package h1

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// pendingSize is how much of an answer is held back before its headers leave: an answer that ends
// within it gets a Content-Length, a longer one (or one flushed early) is chunked. net/http's figure.
const pendingSize = 2 << 10

var pendings = sync.Pool{New: func() any { b := make([]byte, 0, pendingSize); return &b }}

// response is the ResponseWriter of one request.
type response struct {
	c      *conn
	req    *http.Request
	body   *body
	header http.Header

	status      int
	wroteHeader bool // the status is decided
	committed   bool // the status line and headers are in the write buffer
	pending     *[]byte
	clen        int64 // the declared Content-Length, or -1
	written     int64
	chunked     bool
	closeAfter  bool
	rawEnded    bool // the body's end was written through RawChunked's socket
	rawBroken   bool // raw writing stopped inside a chunk: the answer cannot be ended
	werr        error
}

func (w *response) Header() http.Header { return w.header }

// Cut reports whether the server's Close cut this answer's connection: a request cancelled since
// was stopped by the server, not left by its client.
func (w *response) Cut() bool { return w.c.cut.Load() }

func (w *response) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic("h1: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInterim(code)
		return
	}
	w.status, w.wroteHeader = code, true
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.clen = n
		} else {
			w.header.Del("Content-Length")
		}
	}
}

// writeInterim sends a 1xx answer at once, as net/http does.
func (w *response) writeInterim(code int) {
	if w.committed || w.werr != nil {
		return
	}
	if code == http.StatusContinue && w.body != nil {
		w.body.needContinue = false
	}
	bw := w.c.writer()
	bw.WriteString(StatusLine(code))
	w.header.WriteSubset(bw, framingHeaders) // they are the final answer's
	bw.WriteString("\r\n")
	w.werr = bw.Flush()
}

// bodyAllowed reports whether the status may carry a body.
func (w *response) bodyAllowed() bool {
	return w.status != http.StatusNoContent && w.status != http.StatusNotModified && w.status >= 200
}

func (w *response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	if w.werr != nil {
		return 0, w.werr
	}
	if w.clen >= 0 && w.written+int64(len(p)) > w.clen {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.committed {
		if w.pending == nil {
			w.pending = pendings.Get().(*[]byte)
		}
		if len(*w.pending)+len(p) <= pendingSize {
			*w.pending = append(*w.pending, p...)
			return len(p), nil
		}
		w.sniff(p)
		w.commit()
	}
	w.writeBody(p)
	if w.werr != nil {
		return 0, w.werr
	}
	return len(p), nil
}

// writeBody puts p into the write buffer, as a chunk when the answer is chunked.
func (w *response) writeBody(p []byte) {
	if len(p) == 0 || w.werr != nil || w.req.Method == http.MethodHead {
		return // an answer to HEAD: the body is counted, and dropped
	}
	bw := w.c.writer()
	if w.chunked {
		var hex [20]byte
		line := strconv.AppendInt(hex[:0], int64(len(p)), 16)
		line = append(line, '\r', '\n')
		bw.Write(line)
	}
	bw.Write(p)
	if w.chunked {
		bw.WriteString("\r\n")
	}
	// A write error of the buffer is sticky: the client left.
	if _, err := bw.Write(nil); err != nil {
		w.werr = err
	}
}

// Flush sends what was written so far, and releases the write buffer until the next write.
func (w *response) Flush() { w.FlushError() }

// FlushError is Flush that reports a client that left; http.ResponseController uses it.
func (w *response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit()
	}
	if w.werr != nil {
		return w.werr
	}
	if w.c.bw != nil {
		w.werr = w.c.bw.Flush()
		w.c.releaseWriter()
	}
	return w.werr
}

// commit decides the framing and writes the status line and headers, then what was pending.
func (w *response) commit() {
	w.committed = true
	h := w.header
	h.Del("Transfer-Encoding")
	req := w.req
	switch {
	case !w.bodyAllowed():
		if w.status != http.StatusNotModified {
			h.Del("Content-Length")
		}
	case w.clen >= 0:
	case req.Method == http.MethodHead:
	case req.ProtoMinor >= 1:
		w.chunked = true
		h["Transfer-Encoding"] = chunkedValue
	default:
		w.closeAfter = true // HTTP/1.0: the end of the body is the end of the connection
	}
	if req.Close || w.c.s.isClosing() || hasToken(h["Connection"], "close") {
		w.closeAfter = true
	}
	if !w.body.eof && (w.body.needContinue || w.body.chunked || w.body.n > maxDiscard) {
		// The client is still sending (or waiting to send) a body the handler did not read.
		w.closeAfter = true
	}
	switch {
	case w.closeAfter:
		h["Connection"] = closeValue
	case req.ProtoMinor == 0:
		h["Connection"] = keepAliveValue
	}
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{httpDate()}
	}
	w.sniff(nil)
	pending := w.pendingBytes()
	bw := w.c.writer()
	bw.WriteString(StatusLine(w.status))
	h.Write(bw)
	bw.WriteString("\r\n")
	if len(pending) > 0 {
		w.writeBody(pending)
	}
	w.releasePending()
}

func (w *response) pendingBytes() []byte {
	if w.pending == nil {
		return nil
	}
	return *w.pending
}

func (w *response) releasePending() {
	if w.pending != nil {
		*w.pending = (*w.pending)[:0]
		pendings.Put(w.pending)
		w.pending = nil
	}
}

// finish ends the answer after the handler returned: headers if none left yet (with the length of
// a short answer), the last chunk, and a flush.
func (w *response) finish() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		if w.clen < 0 && w.bodyAllowed() && (w.req.Method != http.MethodHead || w.written > 0) {
			w.clen = w.written
			w.header["Content-Length"] = []string{strconv.FormatInt(w.written, 10)}
		}
		w.commit()
	}
	if w.chunked && w.werr == nil && !w.rawEnded && !w.rawBroken {
		w.c.writer().WriteString("0\r\n\r\n")
	}
	if w.clen >= 0 && w.written < w.clen && w.req.Method != http.MethodHead && w.bodyAllowed() {
		w.closeAfter = true // the body is short of its length: the framing is broken
	}
	if w.werr == nil && w.c.bw != nil {
		w.werr = w.c.bw.Flush()
	}
	w.release()
	return w.werr
}

// RawChunked hands the client's socket to a caller that writes the rest of this chunked answer's
// body to it directly, chunk framing included (a relay from a replica's chunked body). Headers and
// what was written before are flushed first. It returns -1 when the answer is not chunked or the
// connection is not a plain TCP socket (TLS); the caller then uses Write. After a socket was
// returned, call RawDone before anything else.
func (w *response) RawChunked() int {
	if err := w.FlushError(); err != nil || !w.chunked || w.c.tls != nil || w.c.fd < 0 {
		return -1
	}
	return w.c.fd
}

// RawDone tells the answer how raw writing ended: written bytes went out; ended means the body's
// last chunk and trailer did too, so nothing follows; otherwise atBoundary means the client got
// whole chunks only and the answer may go on through Write, and neither means the answer is cut
// inside a chunk and the connection is closed after the handler.
func (w *response) RawDone(written int64, ended, atBoundary bool) {
	w.written += written
	switch {
	case ended:
		w.rawEnded = true
	case !atBoundary:
		w.rawBroken, w.closeAfter = true, true
	}
}

// release gives back the buffers the answer holds.
func (w *response) release() {
	w.releasePending()
	if w.c.bw != nil {
		w.c.releaseWriter()
	}
}

// framingHeaders are left out of an interim answer (RFC 9110 §8.6).
var framingHeaders = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

var (
	chunkedValue   = []string{"chunked"}
	closeValue     = []string{"close"}
	keepAliveValue = []string{"keep-alive"}
)

func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for len(v) > 0 {
			var f string
			f, v, _ = cutComma(v)
			if equalFoldTrim(f, token) {
				return true
			}
		}
	}
	return false
}

func cutComma(s string) (before, after string, found bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func equalFoldTrim(s, t string) bool {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], t[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// statusLines are the status lines of the codes net/http knows, built once.
var statusLines = func() []string {
	lines := make([]string, 600)
	for code := range lines {
		if text := http.StatusText(code); text != "" {
			lines[code] = "HTTP/1.1 " + strconv.Itoa(code) + " " + text + "\r\n"
		}
	}
	return lines
}()

// StatusLine is an HTTP/1.1 answer's status line for code, CRLF included, as the server writes it.
func StatusLine(code int) string {
	if code < len(statusLines) && statusLines[code] != "" {
		return statusLines[code]
	}
	return "HTTP/1.1 " + strconv.Itoa(code) + " status code " + strconv.Itoa(code) + "\r\n"
}

// The Date header changes once a second: format it once a second.
type cachedDate struct {
	sec int64
	s   string
}

var dateCache atomic.Pointer[cachedDate]

func httpDate() string {
	now := time.Now()
	if d := dateCache.Load(); d != nil && d.sec == now.Unix() {
		return d.s
	}
	d := &cachedDate{sec: now.Unix(), s: now.UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d.s
}
