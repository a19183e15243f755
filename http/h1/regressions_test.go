package h1_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/lmproxy/lmproxy/http/h1"
)

// Tests named after the bugs they found in h1, each fixed in its own change.

// TestHeaderNameWithSpaceRefused: h1 took a header name with a space in it (net/textproto lets one
// through before the colon) as is, so "Content-Length : 34" did not frame the body: the body was
// read as a next request, a request smuggled past any front end that reads the header as the
// length. net/http refuses header names that are not tokens; so does h1 now.
func TestHeaderNameWithSpaceRefused(t *testing.T) {
	runConformanceRows(t, "header name with space", "Content-Length with a space before the colon")
}

// TestFramingHeadersInRequestHeader: the handler saw "Transfer-Encoding: chunked" in
// Request.Header, and every copy of a repeated Content-Length; net/http moves the first to
// Request.TransferEncoding and keeps one Content-Length, and handlers (a proxy copying headers
// upstream) rely on it.
func TestFramingHeadersInRequestHeader(t *testing.T) {
	runConformanceRows(t, "chunked request body", "chunked request body with trailers",
		"chunked request body with declared trailers", "Content-Length duplicated",
		"small chunked body not read", "truncated chunked body", "bad chunk size",
		"chunked request body of 1 MiB")
}

// TestContentTypeSniffing: h1 sniffed a Content-Type only from the bytes it held back before the
// head left, so an answer whose first write went past 2 KiB got none, and neither did any answer
// to HEAD; and it sniffed one despite a Content-Encoding. It now sniffs as net/http does, and
// answers HEAD with the head GET would get (no Content-Length once the body went past 2 KiB).
func TestContentTypeSniffing(t *testing.T) {
	runConformanceRows(t, "HEAD with a short body", "HEAD with a long body", "HEAD with a flushed body",
		"long body in one write", "long body in long writes", "Content-Encoding set",
		"Content-Length set, long body in one write")
}

// Test304WithContentLengthKeepsConnection: a 304 whose handler set a Content-Length (that of the
// 200 answer it stands for) closed the connection, h1 taking the missing body for a short one.
// A 304 has no body; net/http keeps the connection, and so does h1 now.
func Test304WithContentLengthKeepsConnection(t *testing.T) {
	runConformanceRows(t, "304 with Content-Length")
}

// TestWatcherStopsAfterShutdownTimeout: once Shutdown gave up (its context ended) or Close did (a
// handler ignored its cancelled context), the hang-up watcher's goroutine and descriptors stayed
// for good, even after the last connection ended. They now go with the last connection: nothing
// of the server outlives its connections, as with net/http.
func TestWatcherStopsAfterShutdownTimeout(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	bh := newBlockingHandler(t)
	srv := &h1.Server{Handler: bh}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	rc := dialRaw(t, ln.Addr().String())
	rc.write("GET /block HTTP/1.1\r\nHost: h\r\n\r\n")
	waitFor(t, bh.started, "the request")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	if err := waitFor(t, served, "Serve"); !errors.Is(err, h1.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	close(bh.release)
	if resp, body := rc.mustRead("GET"); resp.StatusCode != 200 || !resp.Close || body != "done /block" {
		t.Fatalf("answer %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	if !rc.waitClosed(waitLimit) {
		t.Fatal("the connection stays open")
	}
	// No Close: the server is done once its last connection is.
	goleak.VerifyNone(t, ignore)
}

// TestAnswerCutByReset: h1 closed connections with input it had not read (the rest of a head it
// refused, a body its handler left unread), and closing a socket with unread input resets the
// connection: a client reading an answer that ends with the connection (every refusal, an answer
// to HTTP/1.0 without a length) got "connection reset" instead of its end, and any part of an
// answer still in the server's buffers was lost. h1 now half-closes such a connection and reads
// what the client still sends, until the client closes or half a second passes, before closing it
// (net/http half-closes and waits after a 431 or an unread body).
func TestAnswerCutByReset(t *testing.T) {
	long := strings.Repeat("c", 3000)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, long) })
	ts := startH1(t, &h1.Server{Handler: handler, MaxHeaderBytes: 1 << 10})
	body := strings.Repeat("b", 1<<20)
	cases := []struct {
		name   string
		req    string
		status int
	}{
		{"431", "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: " + strings.Repeat("a", 16<<10) + "\r\n\r\n", 431},
		{"501 with a body", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n" + body, 501},
		{"unread body, HTTP/1.0", "POST / HTTP/1.0\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body, 200},
		{"unread body", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body, 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := dialRaw(t, ts.addr)
			// The whole request, then the answer.
			var writer sync.WaitGroup
			writer.Go(func() { io.WriteString(rc.nc, c.req) })
			writer.Wait()
			resp, got := rc.mustRead(http.MethodPost)
			if resp.StatusCode != c.status || !resp.Close {
				t.Fatalf("answer %d close=%v, want %d and Connection: close", resp.StatusCode, resp.Close, c.status)
			}
			if c.status == 200 && got != long {
				t.Fatalf("answer of %d bytes, want %d", len(got), len(long))
			}
			if !rc.waitClosed(waitLimit) {
				t.Fatal("the connection stays open")
			}
		})
	}
}

// TestChunkedHTTP10ClosesConnection: h1 read a chunked body on HTTP/1.0, which has no
// Transfer-Encoding, and kept the connection when asked to: a front end that frames such a message
// otherwise (net/http ignores the header, and would take the chunks for a next request) disagrees
// with it on where the next request starts. RFC 9112 §6.1 requires closing the connection after
// such a message; h1 now does.
func TestChunkedHTTP10ClosesConnection(t *testing.T) {
	runConformanceRows(t, "chunked on HTTP/1.0")
	t.Run("keep-alive", func(t *testing.T) {
		ts := startH1(t, &h1.Server{Handler: echoHandler(newRecorder())})
		rc := dialRaw(t, ts.addr)
		rc.write("POST /?body=ok HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
		resp, body := rc.mustRead(http.MethodPost)
		if resp.StatusCode != 200 || body != "ok" || !resp.Close {
			t.Fatalf("answer %d %q close=%v, want 200 \"ok\" and Connection: close", resp.StatusCode, body, resp.Close)
		}
		if !rc.waitClosed(waitLimit) {
			t.Fatal("the connection stays open")
		}
	})
}

// TestEmptyLineBeforeRequestLine: h1 refused a request preceded by an empty line, which some
// clients send after a POST body, with 400 and closed the connection. RFC 9112 §2.2 asks a server
// to ignore at least one; net/http ignores them after a POST, and h1 now ignores one anywhere.
func TestEmptyLineBeforeRequestLine(t *testing.T) {
	runConformanceRows(t, "CRLF after a POST body")
	t.Run("first request", func(t *testing.T) {
		ts := startH1(t, &h1.Server{Handler: echoHandler(newRecorder())})
		rc := dialRaw(t, ts.addr)
		rc.write("\r\nGET /?body=ok HTTP/1.1\r\nHost: h\r\n\r\n")
		if resp, body := rc.mustRead(http.MethodGet); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("answer %d %q", resp.StatusCode, body)
		}
	})
}

// TestInterimAnswerWithoutLength: an interim answer (103 Early Hints) carried the handler's
// Content-Length and Transfer-Encoding headers, which RFC 9110 §8.6 forbids in a 1xx answer (they
// belong to the final one); net/http leaves them out, and so does h1 now.
func TestInterimAnswerWithoutLength(t *testing.T) {
	runConformanceRows(t, "103 Early Hints with Content-Length set")
}
