package http

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// upstream is the one connection pool that every forwarded request goes through.
type upstream struct {
	transport *http.Transport
	timeout   time.Duration // --upstream-timeout; 0 = none
}

// dialError marks a failure to reach a replica: nothing of the request was sent, so it may be retried
// on another replica.
type dialError struct{ err error }

func (e *dialError) Error() string { return "cannot reach replica: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// isDialError reports whether err means the request never reached the replica.
func isDialError(err error) bool {
	var d *dialError
	return errors.As(err, &d)
}

func newUpstream(maxConns, maxConnsPerHost int, timeout time.Duration) *upstream {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	var slots chan struct{}
	if maxConns > 0 {
		slots = make(chan struct{}, maxConns)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if slots != nil {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			if slots != nil {
				<-slots
			}
			if ctx.Err() != nil {
				return nil, err // the request ended first: not the replica's fault
			}
			return nil, &dialError{err}
		}
		if slots != nil {
			return &slotConn{Conn: c, slots: slots}, nil
		}
		return c, nil
	}
	return &upstream{
		timeout: timeout,
		transport: &http.Transport{
			DialContext: dial,
			// Thousands of concurrent streams each hold a connection; keep them for reuse instead of
			// dialing (and leaving TIME_WAIT behind) for every request.
			MaxIdleConns:        0,
			MaxIdleConnsPerHost: 4096,
			MaxConnsPerHost:     maxConnsPerHost,
			IdleConnTimeout:     90 * time.Second,
			// Bodies pass through byte for byte: never let the transport decompress them.
			DisableCompression: true,
			WriteBufferSize:    16 << 10,
			ReadBufferSize:     16 << 10,
		},
	}
}

func (u *upstream) close() { u.transport.CloseIdleConnections() }

// slotConn gives its --max-conns slot back when closed, once.
type slotConn struct {
	net.Conn
	slots chan struct{}
	once  sync.Once
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.slots })
	return err
}
