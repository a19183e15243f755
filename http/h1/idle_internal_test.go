package h1

import (
	"net"
	"sync"
	"testing"
	"time"
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
