package h1_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// leanHook serves POST /lean requests whose body is whole in the buffer with "lean:" and the body,
// hands POST /handover over with the value "handed", panics on POST /panic, waits on POST /wait for
// its context to end (reporting it on cancelled), and declines anything else. Each offer is
// reported on offered.
type leanHook struct {
	offered   chan string
	cancelled chan struct{}
}

func newLeanHook() *leanHook {
	return &leanHook{offered: make(chan string, 16), cancelled: make(chan struct{}, 1)}
}

func (l *leanHook) serve(r *h1.LeanRequest) int {
	line, _, _ := bytes.Cut(r.Head, []byte("\r\n"))
	l.offered <- string(line)
	length := 0
	for _, h := range bytes.Split(r.Head, []byte("\r\n")) {
		if name, value, ok := bytes.Cut(h, []byte(": ")); ok && strings.EqualFold(string(name), "Content-Length") {
			length, _ = strconv.Atoi(string(value))
		}
	}
	switch string(line) {
	case "POST /lean HTTP/1.1":
		if len(r.Rest) < length {
			return 0
		}
		bw := r.Writer()
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: " + strconv.Itoa(len("lean:")+length) + "\r\n\r\nlean:")
		bw.Write(r.Rest[:length])
		return len(r.Head) + len("\r\n") + length
	case "POST /handover HTTP/1.1":
		r.HandOver("handed")
	case "POST /panic HTTP/1.1":
		panic("lean hook test panic")
	case "POST /wait HTTP/1.1":
		<-r.Context().Done()
		l.cancelled <- struct{}{}
		r.HandOver("gone")
	}
	return 0
}

// handedHandler answers with the path and what the lean hook handed over, if anything.
var handedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	handed, _ := h1.HandedOver(r.Context()).(string)
	io.WriteString(w, r.URL.Path+" "+string(body)+" "+handed)
})

func startLean(t *testing.T) (*testServer, *leanHook) {
	hook := newLeanHook()
	return startH1(t, &h1.Server{Handler: handedHandler, Lean: hook.serve}), hook
}

// The hook serves what it takes, on a connection that goes on; what it declines, and what it hands
// over with a value for the handler, reaches the handler whole.
func TestLeanHookServesDeclinesAndHandsOver(t *testing.T) {
	ts, _ := startLean(t)
	c := dialRaw(t, ts.addr)
	c.write("POST /lean HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
	resp, body := c.mustRead(http.MethodPost)
	if resp.StatusCode != http.StatusOK || body != "lean:abc" {
		t.Fatalf("lean answer: %d %q", resp.StatusCode, body)
	}
	c.write("POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nxy")
	if _, body := c.mustRead(http.MethodPost); body != "/other xy " {
		t.Fatalf("declined request: %q", body)
	}
	c.write("POST /handover HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
	if _, body := c.mustRead(http.MethodPost); body != "/handover hi handed" {
		t.Fatalf("handed-over request: %q", body)
	}
	// Two requests in one write: the second waits in the buffer while the hook serves the first.
	c.write("POST /lean HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n1POST /lean HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n2")
	for _, want := range []string{"lean:1", "lean:2"} {
		if _, body := c.mustRead(http.MethodPost); body != want {
			t.Fatalf("pipelined answer %q, want %q", body, want)
		}
	}
}

// A body that has not all arrived with its head is declined by this hook and read by the server,
// and a head the server would refuse is never offered.
func TestLeanHookSeesOnlyWholeCheckedHeads(t *testing.T) {
	ts, hook := startLean(t)
	c := dialRaw(t, ts.addr)
	c.write("POST /lean HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\na")
	waitFor(t, hook.offered, "the offer")
	c.write("bc")
	if _, body := c.mustRead(http.MethodPost); body != "/lean abc " {
		t.Fatalf("a body in parts: %q", body)
	}
	c = dialRaw(t, ts.addr)
	c.write("POST /lean HTTP/1.1\r\nHost: t\r\nBad Name: x\r\nContent-Length: 1\r\n\r\na")
	if resp, _ := c.mustRead(http.MethodPost); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a head with an invalid name: %d, want 400", resp.StatusCode)
	}
}

// A panic in the hook closes its connection only; the server goes on.
func TestLeanHookPanicClosesTheConnection(t *testing.T) {
	ts, _ := startLean(t)
	c := dialRaw(t, ts.addr)
	c.write("POST /panic HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
	if !c.waitClosed(waitLimit) {
		t.Fatal("the connection stayed open after the hook panicked")
	}
	if !strings.Contains(ts.log.String(), "lean hook test panic") {
		t.Errorf("the panic was not logged: %q", ts.log.String())
	}
	c = dialRaw(t, ts.addr)
	c.write("POST /lean HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nz")
	if _, body := c.mustRead(http.MethodPost); body != "lean:z" {
		t.Fatalf("after a panic: %q", body)
	}
}

// A client that hangs up while the hook works cancels the hook's context, and the handler that
// gets the request handed over sees the same cancelled context.
func TestLeanHookContextEndsWhenTheClientHangsUp(t *testing.T) {
	hook := newLeanHook()
	seen := make(chan error, 1)
	ts := startH1(t, &h1.Server{Lean: hook.serve, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h1.HandedOver(r.Context()) == "gone" {
			seen <- r.Context().Err()
		}
	})})
	c := dialRaw(t, ts.addr)
	c.write("POST /wait HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
	waitFor(t, hook.offered, "the offer")
	c.nc.Close()
	waitFor(t, hook.cancelled, "the hook's context to end")
	if err := waitFor(t, seen, "the handler"); err != context.Canceled {
		t.Fatalf("the handler's context: %v, want context.Canceled", err)
	}
}

// After a request the hook served, the server's timeouts hold as after any other: a next head
// that trickles in is cut after ReadHeaderTimeout, and a next request the hook declines may send
// its body later than the wait's deadline (IdleTimeout's), which no longer applies to it.
func TestLeanHookKeepsTheTimeouts(t *testing.T) {
	const timeout = 100 * time.Millisecond
	hook := newLeanHook()
	ts := startH1(t, &h1.Server{Handler: handedHandler, Lean: hook.serve, ReadHeaderTimeout: timeout, IdleTimeout: timeout})
	serveLean := func(c *rawConn) {
		t.Helper()
		c.write("POST /lean HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\na")
		if _, body := c.mustRead(http.MethodPost); body != "lean:a" {
			t.Fatalf("lean answer %q", body)
		}
	}

	c := dialRaw(t, ts.addr)
	serveLean(c)
	c.write("POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
	if !dialRaw(t, ts.addr).waitClosed(waitLimit) { // the clock: a timeout has passed when it is cut
		t.Fatal("a silent connection was not cut")
	}
	c.write("xy")
	if _, body := c.mustRead(http.MethodPost); body != "/other xy " {
		t.Fatalf("a body after the wait's deadline: %q", body)
	}

	c = dialRaw(t, ts.addr)
	serveLean(c)
	c.write("GET /trickle HTTP/1.1\r\n")
	start := time.Now()
	for !c.waitClosed(timeout / 10) {
		if time.Since(start) > waitLimit {
			t.Fatal("a trickling head after a lean request was not cut")
		}
		c.write("X-Slow: yes\r\n")
	}
	if elapsed := time.Since(start); elapsed > 2*timeout+time.Second {
		t.Errorf("cut after %v, want about %v", elapsed, timeout)
	}
}
