package h1

import (
	"context"
	"slices"
	"sync"
	"time"
)

// requestContext is a request's context: it is cancelled when the client hangs up, when the server
// closes the connection and when the handler returns, as a context.WithCancel of Background would
// be. It exists for its AfterFunc. context.AfterFunc on a cancelCtx allocates a context, the done
// channel and a map of children; the proxy registers once per replica exchange, between reading a
// request and writing it to the replica, where timestamps put 10–13 µs (p50) across the call at one
// request at a time (docs/performance.md, eighth round). Here a registration is an entry in a
// short list.
// context.WithCancel and WithTimeout use the same method for contexts derived from this one (they
// look for AfterFunc on a parent that is not theirs), so deriving one starts no goroutine either.
type requestContext struct {
	mu    sync.Mutex
	err   error
	done  chan struct{} // made by the first Done, so a request nobody waits on makes none
	funcs []afterFunc   // registered, not yet run or stopped
	first [2]afterFunc  // funcs' first backing array: a request registers one or two
	ids   uint64
	// handed is what a Lean hook handed over with the request (HandedOver); set before the
	// request's handler runs, read by it only.
	handed any
}

type afterFunc struct {
	id uint64
	f  func()
}

func newRequestContext() *requestContext {
	c := &requestContext{}
	c.funcs = c.first[:0]
	return c
}

func (c *requestContext) Deadline() (time.Time, bool) { return time.Time{}, false }

func (c *requestContext) Value(any) any { return nil }

func (c *requestContext) String() string { return "h1.requestContext" }

func (c *requestContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		}
	}
	return c.done
}

func (c *requestContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// AfterFunc arranges to call f in its own goroutine once c is cancelled, as context.AfterFunc does;
// stop reports whether it kept f from running.
func (c *requestContext) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	c.ids++
	id := c.ids
	c.funcs = append(c.funcs, afterFunc{id: id, f: f})
	c.mu.Unlock()
	return func() bool { return c.stop(id) }
}

func (c *requestContext) stop(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, a := range c.funcs {
		if a.id == id {
			c.funcs = slices.Delete(c.funcs, i, i+1) // it clears the freed entry: no reference to f
			return true
		}
	}
	return false
}

// cancel cancels c with context.Canceled; the first call counts.
func (c *requestContext) cancel() {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = context.Canceled
	if c.done != nil {
		close(c.done)
	}
	funcs := c.funcs
	c.funcs = nil
	c.mu.Unlock()
	for _, a := range funcs {
		go a.f()
	}
}
