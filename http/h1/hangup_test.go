package h1_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// waitingHandler answers /stream with n flushed events, then (like / at once) waits for its
// request's context to end and reports when it did on cancelled. Every request first reports its
// context on started. release ends the waits that would otherwise go on.
type waitingHandler struct {
	started   chan context.Context
	cancelled chan time.Time
	release   chan struct{}
}

func newWaitingHandler(t *testing.T) *waitingHandler {
	h := &waitingHandler{
		started:   make(chan context.Context, 8),
		cancelled: make(chan time.Time, 8),
		release:   make(chan struct{}),
	}
	t.Cleanup(func() { close(h.release) }) // runs before the server's cleanup
	return h
}

func (h *waitingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	h.started <- ctx
	if r.URL.Path == "/quick" {
		io.WriteString(w, "quick")
		return
	}
	if r.URL.Path == "/stream" {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			http.NewResponseController(w).Flush()
		}
	}
	select {
	case <-ctx.Done():
		h.cancelled <- time.Now()
	case <-h.release:
	}
}

// expectCancelled waits for the handler to see its context end within hangupLimit of since.
func (h *waitingHandler) expectCancelled(t *testing.T, since time.Time) {
	t.Helper()
	select {
	case at := <-h.cancelled:
		t.Logf("context cancelled %v after the hang-up", at.Sub(since))
	case <-time.After(hangupLimit):
		t.Fatalf("the handler's context was not cancelled within %v of the client's hang-up", hangupLimit)
	}
}

// needWatcher skips a test of hang-up detection where h1 has no watcher: elsewhere than on Linux a
// handler learns that its client left only when a write fails.
func needWatcher(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("h1 watches for hang-ups on Linux only")
	}
}

// hangUps are the ways a client leaves: a close (FIN) or a reset (RST).
var hangUps = []struct {
	name string
	do   func(net.Conn)
}{
	{"close", func(nc net.Conn) { nc.Close() }},
	{"reset", func(nc net.Conn) { nc.(*net.TCPConn).SetLinger(0); nc.Close() }},
}

// TestHangupCancelsWaitingRequest: a handler that waits without writing (a request queued for a
// replica) learns that its client left from its context.
func TestHangupCancelsWaitingRequest(t *testing.T) {
	needWatcher(t)
	for _, hu := range hangUps {
		t.Run(hu.name, func(t *testing.T) {
			wh := newWaitingHandler(t)
			ts := startH1(t, &h1.Server{Handler: wh})
			rc := dialRaw(t, ts.addr)
			rc.write("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
			waitFor(t, wh.started, "the handler")
			at := time.Now()
			hu.do(rc.nc)
			wh.expectCancelled(t, at)
		})
	}
}

// TestHangupCancelsStream: a stream's handler that waits between events learns that its client left.
func TestHangupCancelsStream(t *testing.T) {
	needWatcher(t)
	for _, hu := range hangUps {
		t.Run(hu.name, func(t *testing.T) {
			wh := newWaitingHandler(t)
			ts := startH1(t, &h1.Server{Handler: wh})
			rc := dialRaw(t, ts.addr)
			rc.write("GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
			resp, err := http.ReadResponse(rc.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := "data: 0\n\ndata: 1\n\ndata: 2\n\n"
			got := make([]byte, len(want))
			if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != want {
				t.Fatalf("events %q, %v", got, err)
			}
			at := time.Now()
			hu.do(rc.nc)
			wh.expectCancelled(t, at)
		})
	}
}

// TestHangupAfterKeepAliveRequests: each request on a keep-alive connection gets a fresh context,
// not cancelled by the end of the one before, and a hang-up during a later request still cancels
// it (the watch is armed once per connection and survives requests).
func TestHangupAfterKeepAliveRequests(t *testing.T) {
	needWatcher(t)
	wh := newWaitingHandler(t)
	ts := startH1(t, &h1.Server{Handler: wh})
	rc := dialRaw(t, ts.addr)
	var prev context.Context
	for i := range 3 {
		if _, body := rc.get("/quick"); body != "quick" {
			t.Fatalf("request %d: %q", i, body)
		}
		ctx := waitFor(t, wh.started, "the handler")
		if ctx == prev {
			t.Fatalf("request %d got the context of the request before", i)
		}
		if ctx.Err() == nil {
			t.Errorf("request %d's context still live after its answer", i)
		}
		prev = ctx
	}
	rc.write("GET /wait HTTP/1.1\r\nHost: h\r\n\r\n")
	ctx := waitFor(t, wh.started, "the handler")
	if err := ctx.Err(); err != nil {
		t.Fatalf("a keep-alive request starts with its context done: %v", err)
	}
	at := time.Now()
	rc.nc.Close()
	wh.expectCancelled(t, at)
}

// TestNoHangupOnPipelinedRequest: bytes of a next request arriving while a handler runs are not a
// hang-up: its context stays live.
func TestNoHangupOnPipelinedRequest(t *testing.T) {
	started := make(chan struct{}, 1)
	proceed := make(chan struct{})
	errs := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			started <- struct{}{}
			select {
			case <-proceed:
			case <-time.After(waitLimit):
			}
			errs <- r.Context().Err()
		}
		io.WriteString(w, r.URL.Path)
	})
	ts := startH1(t, &h1.Server{Handler: h})
	rc := dialRaw(t, ts.addr)
	rc.write("POST /block HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
	waitFor(t, started, "the handler")
	rc.write("GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
	// A round trip on another connection: the server has had the time to notice the bytes.
	if _, body := dialRaw(t, ts.addr).get("/other"); body != "/other" {
		t.Fatalf("other request: %q", body)
	}
	close(proceed)
	if err := waitFor(t, errs, "the handler"); err != nil {
		t.Fatalf("a pipelined request cancelled the running one: %v", err)
	}
	for _, want := range []string{"/block", "/next"} {
		if _, body := rc.mustRead("GET"); body != want {
			t.Fatalf("answer %q, want %q", body, want)
		}
	}
}

// TestFlushAfterHangupFails: a stream that goes on writing after its client left gets an error
// from Flush (through http.ResponseController) soon, as with net/http, on any system.
func TestFlushAfterHangupFails(t *testing.T) {
	started := make(chan struct{}, 1)
	failed := make(chan error, 1)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		tick := time.NewTicker(time.Millisecond) // the stream's pace; it ignores its context
		defer tick.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			if err := rc.Flush(); err != nil {
				failed <- err
				return
			}
			if i == 0 {
				started <- struct{}{}
			}
			<-tick.C
		}
	})
	bothServers(t, handler, func(t *testing.T, ts *testServer) {
		rc := dialRaw(t, ts.addr)
		rc.write("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
		waitFor(t, started, "the stream")
		rc.nc.(*net.TCPConn).SetLinger(0)
		rc.nc.Close()
		if err := waitFor(t, failed, "Flush to fail"); err == nil {
			t.Fatal("no error")
		}
	})
}
