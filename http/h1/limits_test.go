package h1_test

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// countingHandler counts its requests, reads their bodies and answers with the path.
type countingHandler struct{ n atomic.Int64 }

func (h *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.n.Add(1)
	io.Copy(io.Discard, r.Body)
	io.WriteString(w, r.URL.Path)
}

// TestReadHeaderTimeoutClosesTrickle: a client that sends its head a header line at a time,
// never finishing it, is disconnected after ReadHeaderTimeout without an answer, on a first request
// and on a keep-alive connection's next one.
func TestReadHeaderTimeoutClosesTrickle(t *testing.T) {
	const timeout = 200 * time.Millisecond
	for _, keepAlive := range []bool{false, true} {
		name := map[bool]string{false: "first request", true: "next request"}[keepAlive]
		t.Run(name, func(t *testing.T) {
			h := &countingHandler{}
			ts := startH1(t, &h1.Server{Handler: h, ReadHeaderTimeout: timeout})
			rc := dialRaw(t, ts.addr)
			if keepAlive {
				if _, body := rc.get("/first"); body != "/first" {
					t.Fatalf("first answer %q", body)
				}
			}
			rc.write("GET /trickle HTTP/1.1\r\nHost: h\r\n")
			start := time.Now()
			stop := make(chan struct{})
			var trickle sync.WaitGroup
			trickle.Go(func() {
				tick := time.NewTicker(timeout / 10)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					if _, err := io.WriteString(rc.nc, "X-Slow: yes\r\n"); err != nil {
						return
					}
				}
			})
			closed := rc.waitClosed(waitLimit)
			elapsed := time.Since(start)
			close(stop)
			trickle.Wait()
			if !closed {
				t.Fatalf("a trickling head was not cut within %v", waitLimit)
			}
			// The wait for a first byte counts as the head's (a first request), or not at all (a
			// next one): either way the cut comes after about one timeout and within two (the
			// server's clock starts a little before start, hence the slack).
			if elapsed < timeout/2 || elapsed > 2*timeout+time.Second {
				t.Errorf("cut after %v, want about %v", elapsed, timeout)
			}
			if n := h.n.Load(); n != map[bool]int64{false: 0, true: 1}[keepAlive] {
				t.Errorf("the handler ran %d times", n)
			}
		})
	}
}

// TestReadHeaderTimeoutSparesBody: the timeout bounds the head only, not a body that comes later:
// after a head that arrived whole (which sets no deadline of its own) or in pieces, on a first
// request and on a next one. The clock is a second connection that sends nothing: it is cut once a
// timeout has passed.
func TestReadHeaderTimeoutSparesBody(t *testing.T) {
	const timeout = 100 * time.Millisecond
	for _, split := range []bool{false, true} {
		t.Run(map[bool]string{false: "whole head", true: "head in pieces"}[split], func(t *testing.T) {
			h := &countingHandler{}
			ts := startH1(t, &h1.Server{Handler: h, ReadHeaderTimeout: timeout})
			rc := dialRaw(t, ts.addr)
			for _, path := range []string{"/slow-body", "/next-slow-body"} {
				head := "POST " + path + " HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"
				if split {
					rc.write(head[:10])
					head = head[10:]
				}
				rc.write(head)
				if !dialRaw(t, ts.addr).waitClosed(waitLimit) {
					t.Fatal("a silent connection was not cut")
				}
				rc.write("hello")
				if resp, body := rc.mustRead("POST"); resp.StatusCode != 200 || body != path {
					t.Fatalf("answer %d %q", resp.StatusCode, body)
				}
			}
		})
	}
}

// TestIdleTimeout: a keep-alive connection that waits for a next request longer than IdleTimeout
// is closed; one whose request takes longer than that to serve is not. The clock is a connection
// that went idle after the long request started: when it is cut, the request has run longer than
// the timeout.
func TestIdleTimeout(t *testing.T) {
	const timeout = 150 * time.Millisecond
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/long" {
			started <- struct{}{}
			select {
			case <-release:
			case <-time.After(waitLimit):
			}
		}
		io.WriteString(w, r.URL.Path)
	})
	ts := startH1(t, &h1.Server{Handler: handler, IdleTimeout: timeout})

	long := dialRaw(t, ts.addr)
	long.write("GET /long HTTP/1.1\r\nHost: h\r\n\r\n")
	waitFor(t, started, "the long request")

	idle := dialRaw(t, ts.addr)
	if _, body := idle.get("/short"); body != "/short" {
		t.Fatalf("answer %q", body)
	}
	wentIdle := time.Now()
	if !idle.waitClosed(waitLimit) {
		t.Fatalf("an idle keep-alive connection was not closed within %v", waitLimit)
	}
	// The server's clock starts a little before wentIdle, hence the slack.
	if elapsed := time.Since(wentIdle); elapsed < timeout/2 {
		t.Errorf("closed after %v idle, well before the timeout %v", elapsed, timeout)
	}

	close(release)
	if resp, body := long.mustRead("GET"); resp.StatusCode != 200 || body != "/long" || resp.Close {
		t.Fatalf("long answer %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	if _, body := long.get("/again"); body != "/again" {
		t.Fatalf("the connection of a long request was closed: %q", body)
	}
}

// TestMaxHeaderBytes: a head over MaxHeaderBytes (with net/http's 4 KiB of slack) gets 431 and the
// connection closes; one under it is served. As net/http.
func TestMaxHeaderBytes(t *testing.T) {
	const limit = 1 << 10
	h := &countingHandler{}
	servers := map[string]*testServer{
		"h1":       startH1(t, &h1.Server{Handler: h, MaxHeaderBytes: limit}),
		"net/http": startStd(t, &http.Server{Handler: h, MaxHeaderBytes: limit}),
	}
	for name, ts := range servers {
		t.Run(name, func(t *testing.T) {
			rc := dialRaw(t, ts.addr)
			small := "GET /small HTTP/1.1\r\nHost: h\r\nX-Pad: " + strings.Repeat("a", limit/2) + "\r\n\r\n"
			rc.write(small)
			if resp, body := rc.mustRead("GET"); resp.StatusCode != 200 || body != "/small" {
				t.Fatalf("a head under the limit: %d %q", resp.StatusCode, body)
			}
			big := "GET /big HTTP/1.1\r\nHost: h\r\nX-Pad: " + strings.Repeat("a", limit+8<<10) + "\r\n\r\n"
			rc.write(big)
			resp, _ := rc.mustRead("GET")
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("a head over the limit: %d, want 431", resp.StatusCode)
			}
			if !resp.Close || !rc.waitClosed(waitLimit) {
				t.Fatal("the connection stays open after 431")
			}
		})
	}
	if n := h.n.Load(); n != 2 {
		t.Errorf("the handler ran %d times, want 2", n)
	}
}

// TestDefaultMaxHeaderBytes: without MaxHeaderBytes the limit is net/http's 1 MiB.
func TestDefaultMaxHeaderBytes(t *testing.T) {
	h := &countingHandler{}
	ts := startH1(t, &h1.Server{Handler: h})
	rc := dialRaw(t, ts.addr)
	rc.write("GET /fits HTTP/1.1\r\nHost: h\r\nX-Pad: " + strings.Repeat("a", 512<<10) + "\r\n\r\n")
	if resp, body := rc.mustRead("GET"); resp.StatusCode != 200 || body != "/fits" {
		t.Fatalf("a 512 KiB head: %d %q", resp.StatusCode, body)
	}
	var writer sync.WaitGroup
	defer writer.Wait()
	writer.Go(func() {
		io.WriteString(rc.nc, "GET /big HTTP/1.1\r\nHost: h\r\nX-Pad: "+strings.Repeat("a", 2<<20)+"\r\n\r\n")
	})
	if resp, _ := rc.mustRead("GET"); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a 2 MiB head: %d, want 431", resp.StatusCode)
	}
}
