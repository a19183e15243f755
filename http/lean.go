package http

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
	"github.com/lmproxy/lmproxy/messages"
)

// The lean path serves the request nearly every client sends, a non-stream chat or completion
// whose answer is a short JSON with a Content-Length, from the bytes of the client's request and of
// the replica's answer: no http.Request, header maps or response writer (15–30 µs of CPU a
// request less, docs/performance.md, fourteenth round). It takes a request only when nothing about
// it needs the full path: anything else is declined before any replica is asked, and the full path
// serves it from the start. Once a replica was asked, whatever is not the plain answer (an error,
// a stream, a chunked or long answer, a client that left) is handed over to the full path, which
// goes on from where the lean one stopped: errors, retries, logs and metrics are written in one
// place.

// leanRequest is what the lean path reads of a client's head.
type leanRequest struct {
	path     string // /v1/chat/completions or /v1/completions
	headLen  int    // the head's bytes, blank line included
	length   int    // Content-Length
	host     []byte
	id       string // the client's X-Request-Id, "" for none
	priorFor []byte // the client's X-Forwarded-For values, comma-separated
	hasType  bool   // the client sent a Content-Type
	// lines are the header lines that go to the replica: the client's, then the proxy's.
	lines []byte
}

// handover is a request the lean path sent to a replica and gives over to the full path: the lease,
// the exchange's context, and the answer's head or why there is none.
type handover struct {
	id      string
	start   time.Time
	lease   messages.Lease
	leased  time.Time
	ctx     context.Context
	cancel  context.CancelFunc
	resp    *http.Response // nil when err is set
	err     error          // the exchange's
	bodyErr error          // the answer's whole body could not be read: nothing was written
	ttft    time.Duration
}

// leanLines hold the header lines of lean requests on their way to a replica.
var leanLines = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// serveLean is the h1 server's Lean hook: see the comment at the top of this file. It returns how
// many bytes of r it served the request from, 0 when it did not.
func (s *Server) serveLean(r *h1.LeanRequest) int {
	start := time.Now()
	if r.Closing() {
		return 0
	}
	lp := leanLines.Get().(*[]byte)
	defer leanLines.Put(lp)
	q := leanRequest{lines: (*lp)[:0]}
	if !s.readLeanHead(r.Head, &q) || len(r.Rest) < q.length {
		return 0
	}
	body := r.Rest[:q.length]
	f, err := parseFields(body)
	if err != nil || f.stream {
		return 0
	}
	asked := time.Now()
	a, err := s.reg.Acquire(r.Context(), f.model, messages.Hybrid, "")
	if err != nil || a.Status != messages.AcquireOK {
		return 0 // the full path asks again, and answers
	}
	s.cfg.Metrics.Routing(time.Since(asked))
	t := tracked{start: start, id: requestIDOf(q.id), route: q.path, model: f.model, replica: a.Lease.URL}
	outcome, leased := messages.Panic, time.Now()
	handed := false
	defer func() {
		if !handed {
			s.reg.Release(a.Lease, outcome, time.Since(leased))
		}
	}()

	q.lines = appendProxyLines(q.lines, r, &q, t.id)
	*lp = q.lines[:0] // a buffer that grew is kept
	out := replicaRequest{method: http.MethodPost, target: a.Lease.URL, uri: q.path, lean: true, lines: q.lines, body: body}
	ctx, cancel := s.upstreamContext(r.Context())
	resp, err := s.upstream.RoundTrip(ctx, &out)
	handOver := func(exchangeErr, bodyErr error) int {
		handed = true
		if resp != nil && resp.Header == nil {
			resp.Header = wholeHeader(resp.Body.(*pooledBody).lines, nil)
		}
		r.HandOver(&handover{id: t.id, start: start, lease: a.Lease, leased: leased, ctx: ctx, cancel: cancel,
			resp: resp, err: exchangeErr, bodyErr: bodyErr, ttft: t.ttft})
		return 0
	}
	if err != nil {
		return handOver(err, nil)
	}
	lines, plain := plainAnswer(resp)
	if !plain {
		return handOver(nil, nil)
	}
	bp := bodyBuffers.Get().(*[]byte)
	defer bodyBuffers.Put(bp)
	n, bodyErr := readWhole(&t, resp.Body, *bp)
	if bodyErr != nil {
		return handOver(nil, bodyErr)
	}
	bw := r.Writer()
	bw.WriteString(h1.StatusLine(resp.StatusCode))
	writeAnswerLines(bw, lines)
	bw.WriteString("X-Request-Id: ")
	bw.WriteString(t.id)
	if r.Closing() {
		bw.WriteString("\r\nConnection: close") // h1 closes the connection after it
	}
	bw.WriteString("\r\n\r\n")
	bw.Write((*bp)[:n])
	werr := bw.Flush()
	resp.Body.Close()
	cancel()

	t.status, t.written = resp.StatusCode, int64(n)
	outcome = statusOutcome(resp.StatusCode)
	switch {
	case werr != nil && r.Cut():
		outcome = messages.Shutdown
	case werr != nil:
		outcome = messages.ClientGone
	}
	t.setOutcome(outcome)
	s.accessLog(&t, http.MethodPost, q.path)
	return q.headLen + q.length
}

// readLeanHead reads q from a head h1 checked (CRLF line ends, token names, values without control
// characters). It reports false for anything the full path should see: another method, path or
// version, a body not framed by one Content-Length or larger than --max-body, a Content-Type that
// is not JSON, a missing or wrong API key, a CORS request (Origin), Expect, Connection or Upgrade
// (each changes how the exchange goes), a Host header missing, repeated or malformed.
func (s *Server) readLeanHead(head []byte, q *leanRequest) bool {
	line, lines, _ := bytes.Cut(head, []byte("\r\n"))
	switch string(line) {
	case "POST /v1/chat/completions HTTP/1.1":
		q.path = "/v1/chat/completions"
	case "POST /v1/completions HTTP/1.1":
		q.path = "/v1/completions"
	default:
		return false
	}
	q.headLen = len(head) + 2
	q.length = -1
	hosts := 0
	var auth []byte
	for len(lines) > 0 {
		var l []byte
		l, lines, _ = bytes.Cut(lines, []byte("\r\n"))
		name, value, _ := bytes.Cut(l, []byte(":"))
		value = bytes.Trim(value, " \t")
		switch k := leanHeaderOf(name); k {
		case leanContentLength:
			n, ok := leanLength(value)
			if q.length >= 0 || !ok || int64(n) > s.cfg.MaxBody {
				return false
			}
			q.length = n
		case leanHost:
			hosts++
			q.host = value
		case leanContentType:
			if q.hasType || string(value) != "application/json" && checkJSONContentType(string(value)) != nil {
				return false
			}
			q.hasType = true
			q.lines = append(append(q.lines, l...), "\r\n"...)
		case leanAuthorization:
			auth = value
			q.lines = append(append(q.lines, l...), "\r\n"...)
		case leanRequestID:
			if q.id == "" { // the first counts, as for Header.Get
				q.id = string(value)
			}
		case leanForwardedFor:
			if len(q.priorFor) > 0 {
				q.priorFor = append(q.priorFor, ", "...)
			}
			q.priorFor = append(q.priorFor, value...)
		case leanRefused:
			return false
		case leanOther:
			q.lines = append(append(q.lines, l...), "\r\n"...)
		}
	}
	if q.length < 0 || hosts != 1 || !h1.ValidHost(q.host) {
		return false
	}
	return len(s.apiKeys) == 0 || validKey(s.apiKeys, string(auth))
}

// leanLength reads a Content-Length of at most 18 digits (more is past any --max-body).
func leanLength(v []byte) (int, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	n := 0
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// leanHeader is what the lean path does with a header of the client's.
type leanHeader int

const (
	leanOther         leanHeader = iota // forwarded as it came
	leanDropped                         // hop-by-hop, or one the proxy writes itself
	leanRefused                         // the full path's to read
	leanContentLength                   // read; written by writeRequest
	leanHost                            // read; the replica's is written by writeRequest
	leanContentType                     // read and forwarded
	leanAuthorization                   // read and forwarded
	leanRequestID                       // read; the proxy's is forwarded
	leanForwardedFor                    // read; the proxy's, with it, is forwarded
)

// leanHeaderOf says what the lean path does with a client's header. Connection is the full path's:
// the headers it names would not be forwarded either, and "close" changes the answer.
func leanHeaderOf(name []byte) leanHeader {
	var lower [maxLowered]byte
	switch string(lowered(&lower, name)) {
	case "content-length":
		return leanContentLength
	case "host":
		return leanHost
	case "content-type":
		return leanContentType
	case "authorization":
		return leanAuthorization
	case "x-request-id":
		return leanRequestID
	case "x-forwarded-for":
		return leanForwardedFor
	case "x-forwarded-host", "x-forwarded-proto", "proxy-connection", "keep-alive", "proxy-authenticate",
		"proxy-authorization", "te", "trailer":
		return leanDropped
	case "connection", "upgrade", "expect", "origin", "transfer-encoding":
		return leanRefused
	}
	return leanOther
}

// maxLowered is the longest header name lowered lowers: longer ones are none that the lean path
// reads.
const maxLowered = len("proxy-authorization")

// lowered is name in lower case (ASCII) in buf, or nothing when it is longer than buf.
func lowered[T ~string | ~[]byte](buf *[maxLowered]byte, name T) []byte {
	if len(name) > len(buf) {
		return nil
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(name)]
}

// appendProxyLines appends the lines of the headers the proxy adds to a lean request, as
// forwardedHeaders and forward add them to any other.
func appendProxyLines(lines []byte, r *h1.LeanRequest, q *leanRequest, id string) []byte {
	if ip, _, err := net.SplitHostPort(r.RemoteAddr()); err == nil {
		lines = append(lines, "X-Forwarded-For: "...)
		if len(q.priorFor) > 0 {
			lines = append(append(lines, q.priorFor...), ", "...)
		}
		lines = append(append(lines, ip...), "\r\n"...)
	}
	lines = append(append(append(lines, "X-Forwarded-Host: "...), q.host...), "\r\n"...)
	if r.TLS() {
		lines = append(lines, "X-Forwarded-Proto: https\r\n"...)
	} else {
		lines = append(lines, "X-Forwarded-Proto: http\r\n"...)
	}
	lines = append(append(append(lines, "X-Request-Id: "...), id...), "\r\n"...)
	if !q.hasType {
		lines = append(lines, "Content-Type: application/json\r\n"...)
	}
	return lines
}

// plainAnswer returns the header lines of an answer the lean path passes on as they came: a whole
// one parsed in place (readAnswerHead) shorter than the body buffer, with a Content-Type that is
// not an event stream, a Date, and no hop-by-hop header (Connection and Transfer-Encoding are not
// in such a head). Anything else is the full path's, whose answer writer adds what is missing.
func plainAnswer(resp *http.Response) (string, bool) {
	pb, ok := resp.Body.(*pooledBody)
	if !ok || resp.Header != nil || resp.ContentLength >= bodyBufferSize {
		return "", false
	}
	typed, dated := false, false
	var lower [maxLowered]byte
	for rest := pb.lines; len(rest) > 0; {
		var line string
		line, rest, _ = strings.Cut(rest, "\r\n")
		name, value, _ := strings.Cut(line, ":")
		switch string(lowered(&lower, name)) {
		case "content-type":
			typed = !isEventStream(strings.TrimLeft(value, " \t"))
		case "date":
			dated = true
		case "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade":
			return "", false
		}
	}
	return pb.lines, typed && dated
}

// writeAnswerLines writes a replica's header lines, less its X-Request-Id: the proxy's replaces it.
func writeAnswerLines(bw *bufio.Writer, lines string) {
	const id = "X-Request-Id:"
	for len(lines) > 0 {
		i := strings.IndexByte(lines, '\n') + 1
		if l := lines[:i]; len(l) < len(id) || !strings.EqualFold(l[:len(id)], id) {
			bw.WriteString(l)
		}
		lines = lines[i:]
	}
}
