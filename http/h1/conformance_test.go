package h1_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/lmproxy/lmproxy/http/h1"
)

// The conformance table sends the same bytes to net/http's Server and to h1's, both serving
// echoHandler, and compares what a client can rely on: the status of every answer, its framing
// (Content-Length, chunked, or the end of the connection), its Content-Type and body, whether the
// connection stays open afterwards, and what the handler saw of each request. Where h1 differs on
// purpose, the case says how (h1diff) and so documents it.

// seenRequest is what echoHandler saw of one request.
type seenRequest struct {
	Method           string
	RequestURI       string
	URL              string
	Host             string
	Proto            string
	Header           http.Header
	ContentLength    int64
	TransferEncoding []string
	Close            bool
	Body             string
	BodyErr          bool
	Trailer          http.Header
	WriteErr         string
	TLS              bool
}

// recorder collects what echoHandler saw, and knows when no handler runs.
type recorder struct {
	mu     sync.Mutex
	seen   []seenRequest
	active int
}

func newRecorder() *recorder { return &recorder{} }

func (r *recorder) begin() {
	r.mu.Lock()
	r.active++
	r.mu.Unlock()
}

func (r *recorder) end(s seenRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, s)
	r.active--
}

// wait waits until no handler runs and returns what they saw.
func (r *recorder) wait(t testing.TB) []seenRequest {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		r.mu.Lock()
		active, seen := r.active, slices.Clone(r.seen)
		r.mu.Unlock()
		if active == 0 {
			return seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d handlers still running", active)
		}
		time.Sleep(time.Millisecond)
	}
}

// echoHandler records what it saw of each request and answers as the target's query says:
//
//	read=none      do not read the body (default: read it all)
//	hdr=K:V        add a response header (repeatable)
//	cl=N           set Content-Length: N
//	status=N       call WriteHeader(N)
//	late=1         set X-Late: 1 after WriteHeader
//	body=S         write S
//	size=N         write N bytes of text, in writes=K writes (default 1)
//	flush=1        flush after writing
//
// /probe answers "probe" without recording anything.
func echoHandler(rec *recorder) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" {
			io.WriteString(w, "probe")
			return
		}
		rec.begin()
		s := seenRequest{
			Method:           r.Method,
			RequestURI:       r.RequestURI,
			URL:              r.URL.String(),
			Host:             r.Host,
			Proto:            r.Proto,
			Header:           r.Header.Clone(),
			ContentLength:    r.ContentLength,
			TransferEncoding: r.TransferEncoding,
			Close:            r.Close,
			TLS:              r.TLS != nil,
		}
		defer func() { rec.end(s) }()
		q := r.URL.Query()
		if q.Get("read") != "none" {
			b, err := io.ReadAll(r.Body)
			s.Body, s.BodyErr = summary(string(b)), err != nil
			s.Trailer = r.Trailer.Clone()
		}
		for _, kv := range q["hdr"] {
			k, v, _ := strings.Cut(kv, ":")
			w.Header().Add(k, v)
		}
		if cl := q.Get("cl"); cl != "" {
			w.Header().Set("Content-Length", cl)
		}
		if st := q.Get("status"); st != "" {
			n, _ := strconv.Atoi(st)
			w.WriteHeader(n)
		}
		if q.Has("late") {
			w.Header().Set("X-Late", "1")
		}
		var parts [][]byte
		if b := q.Get("body"); b != "" {
			parts = append(parts, []byte(b))
		}
		if n, _ := strconv.Atoi(q.Get("size")); n > 0 {
			k, _ := strconv.Atoi(q.Get("writes"))
			k = max(k, 1)
			text := textOf(n)
			for i := range k {
				parts = append(parts, text[i*n/k:(i+1)*n/k])
			}
		}
		for _, p := range parts {
			if _, err := w.Write(p); err != nil && s.WriteErr == "" {
				s.WriteErr = err.Error()
			}
		}
		if q.Has("flush") {
			http.NewResponseController(w).Flush()
		}
	})
}

// chunked frames s in chunks of n bytes (the last one shorter), without the last chunk.
func chunked(s string, n int) string {
	var b strings.Builder
	for len(s) > 0 {
		k := min(n, len(s))
		fmt.Fprintf(&b, "%x\r\n%s\r\n", k, s[:k])
		s = s[k:]
	}
	return b.String()
}

// textOf returns n bytes of plain text.
func textOf(n int) []byte {
	const line = "the quick brown fox jumps over the lazy dog\n"
	return []byte(strings.Repeat(line, n/len(line)+1)[:n])
}

// summary is s, or its length and hash when it is long, for readable differences.
func summary(s string) string {
	if len(s) <= 64 {
		return s
	}
	return fmt.Sprintf("%d bytes, sha256 %x", len(s), sha256.Sum256([]byte(s)))
}

// otherHeaders is h without the headers answer has fields for, and without Date.
func otherHeaders(h http.Header) http.Header {
	h = h.Clone()
	for _, k := range []string{"Content-Length", "Content-Type", "Connection", "Date"} {
		delete(h, k)
	}
	return h
}

// answer is what a client can rely on of one answer.
type answer struct {
	Status        int
	Proto         string
	ContentLength string // the header's value, "" without one
	Chunked       bool
	Close         bool // the answer says the connection closes after it
	ContentType   string
	Other         http.Header // the headers not named above, but Date
	Body          string
	BodyErr       bool
}

// observation is what a client and the handler saw of an exchange.
type observation struct {
	Answers []answer
	Open    bool // the connection answered a further request
	Seen    []seenRequest
}

// step is one exchange on a connection: bytes sent (then, concurrently, big bytes of body, or the
// end of the client's sending), then the answers read, one for each method in reads.
type step struct {
	send       string
	big        int
	closeWrite bool
	reads      []string
}

// conformanceCase is one row of the table.
type conformanceCase struct {
	name    string
	req     string             // sent in one write; the answer is read for req's method
	steps   []step             // instead of req
	refused bool               // an error answer whose text is the server's own: compare its status only
	status  []int              // the statuses expected of the answers
	open    bool               // the connection is expected to stay open
	h1diff  func(*observation) // turns net/http's observation into h1's documented one
}

// exchange runs c's steps on a new connection to ts, then checks whether the connection still
// answers a request, and returns what was seen.
func (c conformanceCase) exchange(t *testing.T, ts *testServer, rec *recorder) observation {
	steps := c.steps
	if steps == nil {
		method, _, _ := strings.Cut(c.req, " ")
		steps = []step{{send: c.req, reads: []string{method}}}
	}
	rc := dialRaw(t, ts.addr)
	var o observation
	var writer sync.WaitGroup
	defer writer.Wait()
	for _, st := range steps {
		rc.write(st.send)
		if st.big > 0 {
			// The body goes on while the answer is read, as a client does; the write ends when
			// the server closes the connection or reads it all.
			writer.Go(func() { rc.nc.Write(textOf(st.big)) })
		}
		if st.closeWrite {
			rc.nc.(*net.TCPConn).CloseWrite()
		}
		for _, method := range st.reads {
			resp, body, err := rc.read(method)
			if resp == nil {
				t.Fatalf("%s: reading an answer: %v", ts.addr, err)
			}
			o.Answers = append(o.Answers, answer{
				Status:        resp.StatusCode,
				Proto:         resp.Proto,
				ContentLength: resp.Header.Get("Content-Length"),
				Chunked:       slices.Contains(resp.TransferEncoding, "chunked"),
				Close:         resp.Close,
				ContentType:   resp.Header.Get("Content-Type"),
				Other:         otherHeaders(resp.Header),
				Body:          summary(body),
				BodyErr:       err != nil,
			})
		}
	}
	writer.Wait()
	// Whether the connection is open: it answers a further request, or the server closes it.
	rc.nc.Write([]byte("GET /probe HTTP/1.1\r\nHost: probe\r\n\r\n"))
	resp, body, err := rc.read(http.MethodGet)
	switch {
	case err == nil && resp.StatusCode == http.StatusOK && body == "probe":
		o.Open = true
	case isClosedErr(err):
	default:
		t.Fatalf("probe after the exchange: %v %v %q", resp, err, body)
	}
	o.Seen = rec.wait(t)
	return o
}

// conformanceCases is the table; TestConformance runs it all, and tests named after the bugs it
// found run their rows again by name.
var conformanceCases = []conformanceCase{
	{
		name:   "GET",
		req:    "GET /a/b?body=hello HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
		status: []int{200}, open: true,
	},
	{
		name:   "POST with Content-Length",
		req:    "POST /submit?body=ok HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
		status: []int{200}, open: true,
	},
	{
		name:   "chunked request body",
		req:    "POST /?body=ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
		status: []int{200}, open: true,
	},
	{
		name:   "chunked request body with trailers",
		req:    "POST /?body=ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\nX-Other: a\r\n\r\n",
		status: []int{200}, open: true,
		// h1 reads a trailer section and drops it: Request.Trailer stays nil.
		h1diff: func(o *observation) { o.Seen[0].Trailer = nil },
	},
	{
		name:   "chunked request body with declared trailers",
		req:    "POST /?body=ok HTTP/1.1\r\nHost: h\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 42\r\n\r\n",
		status: []int{200}, open: true,
		// h1 reads a trailer section and drops it: Request.Trailer stays nil, and the
		// Trailer header stays in Request.Header (net/http moves it to Request.Trailer).
		h1diff: func(o *observation) { o.Seen[0].Trailer = nil; o.Seen[0].Header.Set("Trailer", "X-Sum") },
	},
	{
		name:   "HTTP/1.0",
		req:    "GET /?body=old HTTP/1.0\r\n\r\n",
		status: []int{200}, open: false,
		// h1 answers every request as HTTP/1.1 (RFC 9110 §6.2), net/http as HTTP/1.0.
		h1diff: func(o *observation) { o.Answers[0].Proto = "HTTP/1.1" },
	},
	{
		name:   "HTTP/1.0 keep-alive",
		req:    "GET /?body=old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		status: []int{200}, open: true,
		h1diff: func(o *observation) { o.Answers[0].Proto = "HTTP/1.1" },
	},
	{
		name:   "HTTP/1.0 keep-alive long answer",
		req:    "GET /?size=5000&writes=5 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		status: []int{200}, open: false,
		h1diff: func(o *observation) { o.Answers[0].Proto = "HTTP/1.1" },
	},
	{
		name:   "Connection: close",
		req:    "GET /?body=bye HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
		status: []int{200}, open: false,
	},
	{
		name: "pipelined",
		steps: []step{{
			send:  "GET /?body=one HTTP/1.1\r\nHost: h\r\n\r\nPOST /?body=two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /?size=3000&writes=3 HTTP/1.1\r\nHost: h\r\n\r\n",
			reads: []string{"GET", "POST", "GET"},
		}},
		status: []int{200, 200, 200}, open: true,
	},
	{
		name: "pipelined after Connection: close",
		steps: []step{{
			send:  "GET /?body=one HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /?body=two HTTP/1.1\r\nHost: h\r\n\r\n",
			reads: []string{"GET"},
		}},
		status: []int{200}, open: false,
	},
	{name: "missing Host", req: "GET / HTTP/1.1\r\n\r\n", refused: true, status: []int{400}},
	{name: "two Host headers", req: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", refused: true, status: []int{400}},
	{name: "bad Host", req: "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", refused: true, status: []int{400}},
	{name: "Content-Length not a number", req: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", refused: true, status: []int{400}},
	{name: "Content-Length negative", req: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", refused: true, status: []int{400}},
	{name: "Content-Length signed", req: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nx", refused: true, status: []int{400}},
	{name: "Content-Length empty", req: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", refused: true, status: []int{400}},
	{name: "Content-Length conflicting", req: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy", refused: true, status: []int{400}},
	{name: "Content-Length too large", req: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", refused: true, status: []int{400}},
	{
		name:   "Content-Length duplicated",
		req:    "POST /?body=ok HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		status: []int{200}, open: true,
	},
	{name: "Transfer-Encoding gzip", req: "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", refused: true, status: []int{501}},
	{name: "Transfer-Encoding gzip, chunked", req: "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", refused: true, status: []int{501}},
	{name: "Transfer-Encoding twice", req: "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", refused: true, status: []int{501}},
	{
		name:    "Transfer-Encoding and Content-Length",
		req:     "POST /?body=ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		refused: true, status: []int{400},
		// net/http drops the Content-Length and reads the chunked body; h1 refuses such a
		// request (RFC 9112 §6.3 allows either), which a proxy cannot be smuggled through.
		h1diff: func(o *observation) {
			*o = observation{Answers: []answer{{Status: 400, Proto: "HTTP/1.1", Close: true, Other: http.Header{}}}}
		},
	},
	{name: "header without colon", req: "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", refused: true, status: []int{400}},
	{name: "header name with space", req: "GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n", refused: true, status: []int{400}},
	{
		name:    "Content-Length with a space before the colon",
		req:     "POST /?body=ok HTTP/1.1\r\nHost: h\r\nContent-Length : 34\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
		refused: true, status: []int{400},
	},
	{name: "header name with control byte", req: "GET / HTTP/1.1\r\nHost: h\r\nBad\x01Name: v\r\n\r\n", refused: true, status: []int{400}},
	{name: "header value with control byte", req: "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n", refused: true, status: []int{400}},
	{name: "header value with DEL", req: "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n", refused: true, status: []int{400}},
	{name: "request line garbage", req: "GARBAGE\r\n\r\n", refused: true, status: []int{400}},
	{name: "request line without version", req: "GET /\r\nHost: h\r\n\r\n", refused: true, status: []int{400}},
	{name: "bad version", req: "GET / HTTP/1.x\r\nHost: h\r\n\r\n", refused: true, status: []int{400}},
	{name: "bad method", req: "G(T / HTTP/1.1\r\nHost: h\r\n\r\n", refused: true, status: []int{400}},
	{name: "bad target", req: "GET nopath HTTP/1.1\r\nHost: h\r\n\r\n", refused: true, status: []int{400}},
	{name: "HTTP/2.0", req: "GET / HTTP/2.0\r\nHost: h\r\n\r\n", refused: true, status: []int{505}},
	{name: "HTTP/0.9", req: "GET / HTTP/0.9\r\nHost: h\r\n\r\n", refused: true, status: []int{505}},
	{
		name:   "absolute-form target",
		req:    "GET http://other.example:8080/path?body=abs HTTP/1.1\r\nHost: h\r\n\r\n",
		status: []int{200}, open: true,
	},
	{
		name:   "OPTIONS *",
		req:    "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
		status: []int{200}, open: true,
		// net/http answers OPTIONS * itself (200, no body); h1 hands it to the handler, with
		// URL.Path "*".
		h1diff: func(o *observation) {
			o.Seen = []seenRequest{{
				Method: "OPTIONS", RequestURI: "*", URL: "*", Host: "h", Proto: "HTTP/1.1",
				Header: http.Header{}, ContentLength: 0,
			}}
		},
	},
	{name: "lowercase method", req: "get /?body=x HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "HEAD with a short body", req: "HEAD /?body=hello HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "HEAD with a long body", req: "HEAD /?size=5000 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "HEAD with a flushed body", req: "HEAD /?body=hello&flush=1 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "HEAD with Content-Length set", req: "HEAD /?cl=10 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "no body written", req: "GET / HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "status only", req: "GET /?status=201 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{201}, open: true},
	{name: "unknown status", req: "GET /?status=599&body=x HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{599}, open: true},
	{name: "short body", req: "GET /?size=2000 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "body of 2 KiB", req: "GET /?size=2048 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "long body in one write", req: "GET /?size=5000 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "long body in many writes", req: "GET /?size=20000&writes=20 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "long body in long writes", req: "GET /?size=20000&writes=7 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "long body after a short write", req: "GET /?body=%3Chtml%3E&size=5000 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "flushed short body", req: "GET /?body=hi&flush=1 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "Content-Type set", req: "GET /?body=%7B%7D&hdr=Content-Type:application/json HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "Content-Encoding set", req: "GET /?body=xyz&hdr=Content-Encoding:gzip HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "Content-Length set", req: "GET /?cl=5&body=hello HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "Content-Length set, long body", req: "GET /?cl=5000&size=5000&writes=5 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "Content-Length set, long body in one write", req: "GET /?cl=5000&size=5000 HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: true},
	{name: "Content-Length set, body short of it", req: "GET /?cl=10&body=hello HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: false},
	{name: "Content-Length set, body over it", req: "GET /?cl=3&body=hello HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{200}, open: false},
	{
		name:   "Content-Length invalid",
		req:    "GET /?cl=abc&body=hello HTTP/1.1\r\nHost: h\r\n\r\n",
		status: []int{200}, open: true,
		// Both drop a handler's invalid Content-Length; h1 then frames the short answer with
		// its length as if none had been set, net/http chunks it.
		h1diff: func(o *observation) { o.Answers[0].ContentLength = "5"; o.Answers[0].Chunked = false },
	},
	{name: "204 with a body", req: "GET /?status=204&body=nope HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{204}, open: true},
	{name: "304 with a body", req: "GET /?status=304&body=nope HTTP/1.1\r\nHost: h\r\n\r\n", status: []int{304}, open: true},
	{
		name:   "304 with Content-Length",
		req:    "GET /?status=304&cl=10&hdr=Content-Type:text/html HTTP/1.1\r\nHost: h\r\n\r\n",
		status: []int{304}, open: true,
		// h1 keeps the Content-Length and Content-Type a handler sets on a 304 (RFC 9110
		// §8.6 allows them: they describe the 200 answer); net/http drops them.
		h1diff: func(o *observation) { o.Answers[0].ContentLength = "10"; o.Answers[0].ContentType = "text/html" },
	},
	{
		name:   "header set after WriteHeader",
		req:    "GET /?status=200&late=1&body=x HTTP/1.1\r\nHost: h\r\n\r\n",
		status: []int{200}, open: true,
		// h1 sends the header map as it is when the answer's first bytes leave; net/http
		// copies it at WriteHeader (an allocation per request) and drops later changes, as
		// its documentation says. A handler that changes headers after WriteHeader is wrong
		// with either.
		h1diff: func(o *observation) { o.Answers[0].Other.Set("X-Late", "1") },
	},
	{
		name: "Expect 100-continue, body read",
		steps: []step{
			{send: "POST /?body=ok HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", reads: []string{"POST"}},
			{send: "hello", reads: []string{"POST"}},
		},
		status: []int{100, 200}, open: true,
	},
	{
		name:   "Expect 100-continue, body not read",
		req:    "POST /?read=none&body=no HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
		status: []int{200}, open: false,
	},
	{
		name:   "Expect 100-continue, empty body",
		req:    "POST /?body=ok HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
		status: []int{200}, open: true,
	},
	{
		name:   "Expect 100-continue on HTTP/1.0",
		req:    "POST /?body=ok HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
		status: []int{200}, open: true,
		h1diff: func(o *observation) { o.Answers[0].Proto = "HTTP/1.1" },
	},
	{name: "Expect other", req: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nExpect: fly\r\n\r\nx", refused: true, status: []int{417}},
	{
		name:   "Expect other without a body",
		req:    "GET /?body=ok HTTP/1.1\r\nHost: h\r\nExpect: fly\r\n\r\n",
		status: []int{200}, open: true,
		// h1 checks Expect only on a request with a body, where it matters (RFC 9110
		// §10.1.1 makes the 417 a MAY); net/http refuses any request with an unknown one.
		h1diff: func(o *observation) {
			*o = observation{
				Answers: []answer{{
					Status: 200, Proto: "HTTP/1.1", ContentLength: "2", Other: http.Header{},
					ContentType: "text/plain; charset=utf-8", Body: "ok",
				}},
				Open: true,
				Seen: []seenRequest{{
					Method: "GET", RequestURI: "/?body=ok", URL: "/?body=ok", Host: "h", Proto: "HTTP/1.1",
					Header: http.Header{"Expect": {"fly"}},
				}},
			}
		},
	},
	{
		name:   "chunked request body of 1 MiB",
		req:    "POST /?body=ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(string(textOf(1<<20)), 7000) + "0\r\n\r\n",
		status: []int{200}, open: true,
	},
	{
		name: "50 pipelined requests",
		steps: []step{{
			send:  strings.Repeat("GET /?body=again HTTP/1.1\r\nHost: h\r\n\r\nPOST /?size=100 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", 25),
			reads: slices.Repeat([]string{"GET", "POST"}, 25),
		}},
		status: slices.Repeat([]int{200}, 50), open: true,
	},
	{
		name: "body not read, then a pipelined request",
		steps: []step{{
			send:  "POST /?read=none&body=one HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789GET /?body=two HTTP/1.1\r\nHost: h\r\n\r\n",
			reads: []string{"POST", "GET"},
		}},
		status: []int{200, 200}, open: true,
	},
	{
		name: "103 Early Hints",
		steps: []step{{
			send:  "GET /?hdr=Link:%3C/a.css%3E&status=103&body=ok HTTP/1.1\r\nHost: h\r\n\r\n",
			reads: []string{"GET", "GET"},
		}},
		status: []int{103, 200}, open: true,
	},
	{
		name: "103 Early Hints with Content-Length set",
		steps: []step{{
			send:  "GET /?hdr=Link:%3C/a.css%3E&cl=2&status=103&body=ok HTTP/1.1\r\nHost: h\r\n\r\n",
			reads: []string{"GET", "GET"},
		}},
		status: []int{103, 200}, open: true,
	},
	{
		name:   "small body not read",
		req:    "POST /?read=none&body=ok HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789",
		status: []int{200}, open: true,
	},
	{
		name: "body of 200 KiB not read",
		steps: []step{{
			send: "POST /?read=none&body=ok HTTP/1.1\r\nHost: h\r\nContent-Length: " + strconv.Itoa(200<<10) + "\r\n\r\n",
			big:  200 << 10, reads: []string{"POST"},
		}},
		status: []int{200}, open: true,
	},
	{
		name: "body of exactly 256 KiB not read",
		steps: []step{{
			send: "POST /?read=none&body=ok HTTP/1.1\r\nHost: h\r\nContent-Length: " + strconv.Itoa(256<<10) + "\r\n\r\n",
			big:  256 << 10, reads: []string{"POST"},
		}},
		status: []int{200}, open: true,
		// h1 reads and drops up to 256 KiB inclusive to keep the connection; net/http up
		// to 256 KiB exclusive.
		h1diff: func(o *observation) { o.Answers[0].Close = false; o.Open = true },
	},
	{
		name: "large body not read",
		steps: []step{{
			send: "POST /?read=none&body=ok HTTP/1.1\r\nHost: h\r\nContent-Length: " + strconv.Itoa(1<<20) + "\r\n\r\n",
			big:  1 << 20, reads: []string{"POST"},
		}},
		status: []int{200}, open: false,
	},
	{
		name:   "small chunked body not read",
		req:    "POST /?read=none&body=ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		status: []int{200}, open: false,
		// h1 closes the connection after an answer that left a chunked body unread (it cannot
		// tell cheaply how much is left); net/http reads up to 256 KiB of it to keep the
		// connection.
		h1diff: func(o *observation) { o.Answers[0].Close = true; o.Open = false },
	},
	{
		name: "truncated chunked body",
		steps: []step{{
			send:       "POST /?body=ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
			closeWrite: true, reads: []string{"POST"},
		}},
		status: []int{200}, open: false,
	},
	{
		name: "truncated body",
		steps: []step{{
			send:       "POST /?body=ok HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhel",
			closeWrite: true, reads: []string{"POST"},
		}},
		status: []int{200}, open: false,
	},
	{
		name:   "bad chunk size",
		req:    "POST /?body=ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
		status: []int{200}, open: false,
	},
	{
		name:   "CONNECT",
		req:    "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
		status: []int{400}, open: false,
		// h1 serves no tunnels: it refuses CONNECT.
		h1diff: func(o *observation) {
			*o = observation{Answers: []answer{{
				Status: 400, Proto: "HTTP/1.1", Close: true, Other: http.Header{},
				ContentType: "text/plain; charset=utf-8", Body: "400 Bad Request: malformed request target",
			}}}
		},
	},
	{
		name:   "chunked on HTTP/1.0",
		req:    "POST /?body=ok HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		status: []int{200}, open: false,
		// net/http ignores Transfer-Encoding on HTTP/1.0 and reads no body (the chunks would be
		// read as a next request); h1 reads the chunked body, then closes the connection as RFC
		// 9112 §6.1 requires after such a message (see TestChunkedHTTP10ClosesConnection).
		h1diff: func(o *observation) {
			o.Answers[0].Proto = "HTTP/1.1"
			s := &o.Seen[0]
			s.ContentLength, s.TransferEncoding, s.Body = -1, []string{"chunked"}, "hello"
		},
	},
	{
		name: "CRLF after a POST body",
		steps: []step{{
			send:  "POST /?body=one HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\r\nGET /?body=two HTTP/1.1\r\nHost: h\r\n\r\n",
			reads: []string{"POST", "GET"},
		}},
		status: []int{200, 200}, open: true,
	},
}

func TestConformance(t *testing.T) {
	for _, c := range conformanceCases {
		t.Run(c.name, c.run)
	}
}

// runConformanceRows runs the table's rows with these names.
func runConformanceRows(t *testing.T, names ...string) {
	for _, name := range names {
		i := slices.IndexFunc(conformanceCases, func(c conformanceCase) bool { return c.name == name })
		if i < 0 {
			t.Fatalf("no conformance row %q", name)
		}
		t.Run(name, conformanceCases[i].run)
	}
}

// run runs the exchange against net/http and h1, and compares.
func (c conformanceCase) run(t *testing.T) {
	stdRec, h1Rec := newRecorder(), newRecorder()
	std := startStd(t, &http.Server{Handler: echoHandler(stdRec)})
	h := startH1(t, &h1.Server{Handler: echoHandler(h1Rec)})
	want := c.exchange(t, std, stdRec)
	got := c.exchange(t, h, h1Rec)
	if c.refused {
		for _, o := range []*observation{&want, &got} {
			for i := range o.Answers {
				// The text is each server's own, and so its length.
				o.Answers[i].Body, o.Answers[i].ContentType, o.Answers[i].ContentLength = "", "", ""
			}
		}
	}
	if c.h1diff != nil {
		c.h1diff(&want)
	}
	assert.Equal(t, want, got, "net/http (adjusted by h1diff) vs h1")
	var statuses []int
	for _, a := range got.Answers {
		statuses = append(statuses, a.Status)
	}
	assert.Equal(t, c.status, statuses, "h1's statuses")
	assert.Equal(t, c.open, got.Open, "h1's connection open after the exchange")
	if c.refused {
		assert.Empty(t, got.Seen, "a refused request reached the handler")
	}
	if t.Failed() {
		t.Logf("h1 log: %s", h.log.String())
	}
}
