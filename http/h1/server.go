// Package h1 is a small HTTP/1.1 server for a proxy's workload: thousands of long-lived streams,
// each on its own keep-alive connection. It serves a standard http.Handler like net/http's Server,
// but with one goroutine per connection and nothing else: no background read per request (a
// client's hang-up is learned from one shared epoll set), no buffers held while a connection waits
// on a replica, and no HTTP/2. Everything a handler sees (the *http.Request, the ResponseWriter and
// its Flush) behaves as net/http's does. A Lean hook may serve a request whose head and body are
// already in the connection's buffer from their bytes, before any of that is made (lean.go).
package h1

import (
	"context"
	"crypto/tls"
	"errors"
	"log"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// Server serves HTTP/1.x on listeners. The zero limits mean none.
type Server struct {
	Handler           http.Handler
	ReadHeaderTimeout time.Duration // the request line and headers must arrive within it
	IdleTimeout       time.Duration // a keep-alive connection without a request is closed after it
	MaxHeaderBytes    int           // larger request headers get 431; 0 means 1 MiB
	TLSConfig         *tls.Config   // when set, every connection is TLS
	ErrorLog          *log.Logger   // handler panics and failed handshakes; nil: the log package's
	// Refused, when set, is told of each request the server answered itself because it could not
	// read it (a malformed head: 400, 417, 431, 501, 505), after the answer: no handler saw it.
	// elapsed runs from the head's first bytes to the answer; it is 0 for a head that arrived whole
	// with them, which is refused within microseconds.
	Refused func(remote string, status int, reason string, elapsed time.Duration)
	// Lean, when set, is offered each request whose head arrived whole with its first bytes, before
	// the request is read into an http.Request for Handler. It returns how many bytes of the buffer
	// (head and body) it served the request from, its answer written to LeanRequest.Writer, or 0
	// when it did not serve it: the request then goes to Handler as any other.
	Lean func(r *LeanRequest) int

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*conn]struct{}
	closing  bool // Shutdown or Close began
	cut      bool // Close began
	hangups  *hangups
	serveErr chan struct{} // closed when Serve returned
}

// ErrServerClosed is what Serve returns after Shutdown or Close.
var ErrServerClosed = http.ErrServerClosed

// Serve accepts connections on ln and serves each in its own goroutine, until Shutdown or Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	s.conns = map[*conn]struct{}{}
	s.hangups = newHangups()
	s.serveErr = make(chan struct{})
	s.mu.Unlock()
	defer close(s.serveErr)

	var delay time.Duration // after a temporary accept error, as net/http does
	for {
		rwc, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.logf("h1: accept error: %v; retrying in %v", err, delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := s.newConn(rwc)
		if !s.track(c) {
			rwc.Close()
			return ErrServerClosed
		}
		go c.serve()
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// track adds c to the connections Shutdown waits for. After Shutdown began, a connection the
// listener had already accepted is still served (as net/http does): its client asked before the
// refusal. After Close it is refused.
func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	last := s.closing && len(s.conns) == 0
	s.mu.Unlock()
	if last {
		// Shutdown or Close may have given up on this connection: nothing else will stop the
		// hang-up watcher.
		s.finish()
	}
}

// Shutdown stops accepting, closes idle connections, and waits for the others to finish their
// current request (they close after it) until ctx ends; then it returns ctx's error and leaves the
// rest to Close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginClose()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if s.closeIdle() {
			s.finish()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// closeWait bounds Close's wait for the handlers it cancelled to return.
const closeWait = 5 * time.Second

// Close stops accepting and closes every connection now, cancelling the requests on them. It waits
// a little for their handlers to return.
func (s *Server) Close() error {
	s.beginClose()
	s.mu.Lock()
	s.cut = true
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
	deadline := time.Now().Add(closeWait)
	for !s.closeIdle() {
		if time.Now().After(deadline) {
			s.logf("h1: handlers still running %v after Close", closeWait)
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	s.finish()
	return nil
}

// beginClose marks the server closing and closes the listener.
func (s *Server) beginClose() {
	s.mu.Lock()
	s.closing = true
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// closeIdle closes the connections that wait for a request and reports whether none is left.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.closeIfIdle()
	}
	return len(s.conns) == 0
}

// finish waits for Serve to return and stops the hang-up watcher.
func (s *Server) finish() {
	s.mu.Lock()
	done, h := s.serveErr, s.hangups
	s.hangups = nil
	s.mu.Unlock()
	if done != nil {
		<-done
	}
	if h != nil {
		h.close()
	}
}

func (s *Server) logf(format string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog.Printf(format, args...)
		return
	}
	log.Printf(format, args...)
}

func (s *Server) maxHeaderBytes() int64 {
	if s.MaxHeaderBytes > 0 {
		return int64(s.MaxHeaderBytes)
	}
	return http.DefaultMaxHeaderBytes
}
