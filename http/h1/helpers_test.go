package h1_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// waitLimit bounds every wait of these tests; what they wait for normally happens within
// milliseconds.
const waitLimit = 10 * time.Second

// hangupLimit is how soon a handler must see its context cancelled after its client hung up.
const hangupLimit = time.Second

// testServer is a server under test on a loopback listener: h1's or net/http's.
type testServer struct {
	addr   string
	served chan error // what Serve returned
	log    *syncBuffer
}

// startH1 serves s on a fresh loopback listener; the server is closed when the test ends, and Serve
// must have returned ErrServerClosed by then. s.ErrorLog is set to a buffer unless s has one.
func startH1(t testing.TB, s *h1.Server) *testServer {
	t.Helper()
	ts := &testServer{served: make(chan error, 1), log: &syncBuffer{}}
	if s.ErrorLog == nil {
		s.ErrorLog = log.New(ts.log, "", 0)
	}
	ts.serve(t, s.Serve, s.Close)
	return ts
}

// serve runs serve on a fresh loopback listener; when the test ends, close stops it and Serve
// must have returned ErrServerClosed.
func (ts *testServer) serve(t testing.TB, serve func(net.Listener) error, close func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	go func() { ts.served <- serve(ln) }()
	t.Cleanup(func() {
		close()
		ts.checkServed(t)
	})
}

// startStd serves h with net/http's Server the same way, as the reference h1 is compared with.
// Its Close does not wait for connections' goroutines (one may linger half a second before closing
// a connection with unread input): the cleanup waits for every connection to be closed.
func startStd(t testing.TB, s *http.Server) *testServer {
	t.Helper()
	ts := &testServer{served: make(chan error, 1), log: &syncBuffer{}}
	if s.ErrorLog == nil {
		s.ErrorLog = log.New(ts.log, "", 0)
	}
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	s.ConnState = func(nc net.Conn, st http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch st {
		case http.StateNew:
			open[nc] = true
		case http.StateClosed, http.StateHijacked:
			delete(open, nc)
		}
	}
	ts.serve(t, s.Serve, func() error {
		err := s.Close()
		for deadline := time.Now().Add(waitLimit); ; time.Sleep(time.Millisecond) {
			mu.Lock()
			n := len(open)
			mu.Unlock()
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("net/http: %d connections still open %v after Close", n, waitLimit)
				break
			}
		}
		return err
	})
	return ts
}

// checkServed waits for Serve to return (once; later calls return at once) and checks that it
// returned ErrServerClosed.
func (ts *testServer) checkServed(t testing.TB) {
	t.Helper()
	select {
	case err, ok := <-ts.served:
		if !ok {
			return
		}
		close(ts.served)
		if !errors.Is(err, h1.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	case <-time.After(waitLimit):
		t.Errorf("Serve did not return within %v of Close", waitLimit)
	}
}

// syncBuffer is a bytes.Buffer for a server's ErrorLog, safe across goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// rawConn is a client connection that writes bytes as given and reads answers with
// http.ReadResponse. Every read and write is bounded by waitLimit.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, waitLimit)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(waitLimit))
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawConn) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read reads one answer to a request with method and its whole body.
func (c *rawConn) read(method string) (*http.Response, string, error) {
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

// mustRead is read that fails the test on an error.
func (c *rawConn) mustRead(method string) (*http.Response, string) {
	c.t.Helper()
	resp, body, err := c.read(method)
	if err != nil {
		c.t.Fatalf("read answer: %v", err)
	}
	return resp, body
}

// get sends a GET for target on the connection and reads its answer.
func (c *rawConn) get(target string) (*http.Response, string) {
	c.t.Helper()
	c.write("GET " + target + " HTTP/1.1\r\nHost: test\r\n\r\n")
	return c.mustRead(http.MethodGet)
}

// waitClosed waits until the server closes the connection, reading and dropping anything it still
// sends, and reports whether it did within d (otherwise the read timed out).
func (c *rawConn) waitClosed(d time.Duration) bool {
	c.nc.SetReadDeadline(time.Now().Add(d))
	defer c.nc.SetReadDeadline(time.Now().Add(waitLimit))
	_, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// isClosedErr reports whether err is what a client sees of a connection the server closed.
func isClosedErr(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe")
}

// waitFor waits on ch for up to waitLimit, failing the test with what if nothing comes.
func waitFor[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}
