package h1

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/proxytest/goroutines"
)

// This test is internal: the race it covers lies between two statements of waitForRequest, which
// no client can hit on purpose.

// pausingConn pauses the first call that sets a read deadline in the future until resume is
// closed, and reports the pause on paused; deadlines in the past (closeIfIdle's) pass at once.
type pausingConn struct {
	net.Conn
	once   sync.Once
	paused chan struct{}
	resume chan struct{}
}

func (p *pausingConn) SetReadDeadline(t time.Time) error {
	if t.After(time.Now()) {
		p.once.Do(func() {
			close(p.paused)
			<-p.resume
		})
	}
	return p.Conn.SetReadDeadline(t)
}

// TestShutdownClosesConnectionGoingIdle: a keep-alive connection marked itself idle, then set its
// idle deadline; Shutdown closing it in between (closeIfIdle's deadline in the past) was undone by
// that deadline, and the connection, already marked closed so that Shutdown's next rounds skipped
// it, waited out its IdleTimeout while Shutdown waited for it. Shutdown's rounds (closeIfIdle every
// few milliseconds) must close a connection whatever point of going idle they find it at.
func TestShutdownClosesConnectionGoingIdle(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	pc := &pausingConn{Conn: server, paused: make(chan struct{}), resume: make(chan struct{})}
	c := (&Server{}).newConn(pc)
	c.state, c.served = stateActive, true // as after a request
	defer c.rwc.Close()

	const idleTimeout = time.Minute
	done := make(chan bool, 1)
	go func() { done <- c.waitForRequest(idleTimeout) }()
	select {
	case <-pc.paused:
	case <-time.After(10 * time.Second):
		t.Fatal("waitForRequest set no deadline")
	}
	c.closeIfIdle() // Shutdown's round, in the middle of going idle
	close(pc.resume)

	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case got := <-done:
			if got {
				t.Fatal("waitForRequest reported a request")
			}
			return
		case <-time.After(2 * time.Millisecond): // Shutdown's next round
			c.closeIfIdle()
		}
		if time.Now().After(deadline) {
			t.Fatalf("a connection going idle during Shutdown was not closed within 5s (IdleTimeout %v)", idleTimeout)
		}
	}
}

// nthDeadlinePause pauses the nth call that sets a read deadline in the future until resume is
// closed, and reports the pause on paused.
type nthDeadlinePause struct {
	net.Conn
	n      int
	calls  int
	paused chan struct{}
	resume chan struct{}
}

func (p *nthDeadlinePause) SetReadDeadline(t time.Time) error {
	if t.After(time.Now()) {
		if p.calls++; p.calls == p.n {
			close(p.paused)
			<-p.resume
		}
	}
	return p.Conn.SetReadDeadline(t)
}

// TestCloseIsNotUndoneByTheNextDeadline: Close cut a connection (a read deadline in the past)
// just before the connection set its header deadline; that deadline undid the cut, and the
// connection waited on its client's half-sent headers for the whole ReadHeaderTimeout instead of
// ending at once.
func TestCloseIsNotUndoneByTheNextDeadline(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	pc := &nthDeadlinePause{Conn: server, n: 2, paused: make(chan struct{}), resume: make(chan struct{})}
	s := &Server{ReadHeaderTimeout: time.Minute}
	c := s.newConn(pc)
	c.raw = pc
	c.lr.r = pc
	defer c.rwc.Close()

	done := make(chan bool, 1)
	go func() {
		ok := c.waitForRequest(s.ReadHeaderTimeout) // 1st deadline: the wait; 2nd: the headers'
		if ok {
			_, _, err := c.readRequest()
			ok = err == nil
		}
		done <- ok
	}()
	go client.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")) // the headers never end
	select {
	case <-pc.paused:
	case <-time.After(10 * time.Second):
		t.Fatal("no header deadline was set")
	}
	c.abort() // Close, between the first byte and the header deadline
	close(pc.resume)
	select {
	case ok := <-done:
		if ok {
			t.Fatal("a request was read from a cut connection")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cut connection waited for its client's headers")
	}
}

// A keep-alive connection on a plain socket waits for its next request without a read buffer (at
// thousands of streams those buffers were one peak of the proxy's memory): the wait is netio's,
// before a buffer is taken, and what then arrives is read whole.
func TestIdleConnectionWaitsWithoutReadBuffer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c := (&Server{}).newConn(server)
	defer c.rwc.Close()

	done := make(chan bool, 1)
	go func() { done <- c.waitForRequest(time.Minute) }()
	deadline := time.Now().Add(5 * time.Second)
	for !goroutines.WaitingForIO("netio.(*Conn).WaitRead", "h1.(*conn).waitForRequest") {
		if time.Now().After(deadline) {
			t.Fatal("the connection did not wait in WaitRead")
		}
		time.Sleep(time.Millisecond)
	}
	client.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("the request was not seen")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the wait did not end")
	}
	if got, _ := c.br.Peek(c.br.Buffered()); string(got) != "GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
		t.Fatalf("buffered %q", got)
	}
}
