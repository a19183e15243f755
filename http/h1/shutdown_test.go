package h1_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// blockingHandler answers /block when released (reporting its start on started), and anything
// else at once.
type blockingHandler struct {
	started chan context.Context
	release chan struct{}
}

func newBlockingHandler(t *testing.T) *blockingHandler {
	h := &blockingHandler{started: make(chan context.Context, 4), release: make(chan struct{})}
	t.Cleanup(func() {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
	})
	return h
}

func (h *blockingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/block" {
		h.started <- r.Context()
		<-h.release
	}
	io.WriteString(w, "done "+r.URL.Path)
}

// shutdownAsync runs s.Shutdown(ctx) in a goroutine and returns its result's channel.
func shutdownAsync(s *h1.Server, ctx context.Context) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	return done
}

// refused reports whether a new connection to addr gets no answer.
func refused(t *testing.T, addr string) bool {
	nc, err := net.DialTimeout("tcp", addr, waitLimit)
	if err != nil {
		return true
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(waitLimit))
	io.WriteString(nc, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	_, err = nc.Read(make([]byte, 1))
	return isClosedErr(err)
}

// TestShutdownWaitsForRunningRequest: Shutdown stops accepting and closes an idle keep-alive
// connection at once, lets a running request finish (its answer says Connection: close, and the
// connection closes after it), then returns nil; Serve returns ErrServerClosed.
func TestShutdownWaitsForRunningRequest(t *testing.T) {
	bh := newBlockingHandler(t)
	srv := &h1.Server{Handler: bh}
	ts := startH1(t, srv)

	idle := dialRaw(t, ts.addr)
	if _, body := idle.get("/idle"); body != "done /idle" {
		t.Fatalf("answer %q", body)
	}
	busy := dialRaw(t, ts.addr)
	busy.write("GET /block HTTP/1.1\r\nHost: h\r\n\r\n")
	waitFor(t, bh.started, "the running request")

	shut := shutdownAsync(srv, context.Background())
	if err := waitFor(t, ts.served, "Serve to return"); !errors.Is(err, h1.ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
	close(ts.served)
	if !idle.waitClosed(waitLimit) {
		t.Fatal("Shutdown did not close an idle connection")
	}
	if !refused(t, ts.addr) {
		t.Fatal("a new connection was served after Shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v while a request runs", err)
	default:
	}

	close(bh.release)
	resp, body := busy.mustRead("GET")
	if resp.StatusCode != 200 || body != "done /block" {
		t.Fatalf("the running request's answer: %d %q", resp.StatusCode, body)
	}
	if !resp.Close {
		t.Error("the answer finished during Shutdown does not say Connection: close")
	}
	if !busy.waitClosed(waitLimit) {
		t.Error("the connection stays open after its last answer")
	}
	if err := waitFor(t, shut, "Shutdown"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestShutdownWithoutConnections returns at once.
func TestShutdownWithoutConnections(t *testing.T) {
	srv := &h1.Server{Handler: http.NotFoundHandler()}
	ts := startH1(t, srv)
	if _, body := dialRaw(t, ts.addr).get("/x"); body == "" {
		t.Fatal("no answer")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	ts.checkServed(t)
}

// TestShutdownBeforeServe: Serve on a server already shut down returns ErrServerClosed.
func TestShutdownBeforeServe(t *testing.T) {
	srv := &h1.Server{Handler: http.NotFoundHandler()}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := srv.Serve(ln); !errors.Is(err, h1.ErrServerClosed) {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}

// TestShutdownContextExpires: when ctx ends before the running requests, Shutdown returns its
// error; the request goes on, and Close then ends it.
func TestShutdownContextExpires(t *testing.T) {
	bh := newBlockingHandler(t)
	srv := &h1.Server{Handler: bh}
	ts := startH1(t, srv)
	busy := dialRaw(t, ts.addr)
	busy.write("GET /block HTTP/1.1\r\nHost: h\r\n\r\n")
	reqCtx := waitFor(t, bh.started, "the running request")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want context.DeadlineExceeded", err)
	}
	if err := reqCtx.Err(); err != nil {
		t.Fatalf("Shutdown cancelled the running request: %v", err)
	}
	ts.checkServed(t)

	closed := make(chan error, 1)
	go func() { closed <- srv.Close() }()
	waitFor(t, reqCtxDone(reqCtx), "Close to cancel the running request")
	close(bh.release)
	if err := waitFor(t, closed, "Close"); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !busy.waitClosed(waitLimit) {
		t.Error("the connection stays open after Close")
	}
}

// reqCtxDone is ctx.Done as a channel waitFor takes.
func reqCtxDone(ctx context.Context) <-chan struct{} { return ctx.Done() }

// TestCloseCancelsRunningRequests: Close cancels the contexts of running requests (and a stream
// between events), closes every connection, returns once their handlers returned, and Serve
// returns ErrServerClosed; new connections are refused.
func TestCloseCancelsRunningRequests(t *testing.T) {
	wh := newWaitingHandler(t)
	srv := &h1.Server{Handler: wh}
	ts := startH1(t, srv)

	waiting := dialRaw(t, ts.addr)
	waiting.write("GET /wait HTTP/1.1\r\nHost: h\r\n\r\n")
	waitFor(t, wh.started, "the waiting request")
	stream := dialRaw(t, ts.addr)
	stream.write("GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
	waitFor(t, wh.started, "the stream")
	if _, err := http.ReadResponse(stream.br, nil); err != nil {
		t.Fatal(err)
	}
	idle := dialRaw(t, ts.addr)
	if _, body := idle.get("/quick"); body != "quick" {
		t.Fatalf("answer %q", body)
	}
	waitFor(t, wh.started, "the quick request")

	at := time.Now()
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close returned only after both handlers saw their contexts end and returned.
	for range 2 {
		select {
		case <-wh.cancelled:
		default:
			t.Fatal("Close returned before a running request's context was cancelled")
		}
	}
	t.Logf("Close took %v", time.Since(at))
	ts.checkServed(t)
	for _, rc := range []*rawConn{waiting, stream, idle} {
		if !rc.waitClosed(waitLimit) {
			t.Error("a connection stays open after Close")
		}
	}
	if !refused(t, ts.addr) {
		t.Fatal("a new connection was served after Close")
	}
}

// TestCloseIdleServer: Close of a server with no connection returns at once and Serve returns.
func TestCloseIdleServer(t *testing.T) {
	srv := &h1.Server{Handler: http.NotFoundHandler()}
	ts := startH1(t, srv)
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ts.checkServed(t)
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown after Close: %v", err)
	}
}
