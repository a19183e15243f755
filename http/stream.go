package http

import (
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/lmproxy/lmproxy/http/relay"
)

// A stream's buffer is held for the stream's whole life, so it is small: a read returns what the
// replica flushed so far, an event or a few. A whole answer is copied with a large one, in fewer
// reads (it bypasses the connection's own 4 KiB buffer).
const (
	streamBufferSize = 2 << 10
	bodyBufferSize   = 32 << 10
)

// flusher is net/http's response writer's flush that reports a client that left.
type flusher interface{ FlushError() error }

// writerAs finds, in w or the writers it wraps, one that is a T: net/http's flusher, or h1's raw
// socket hand-over.
func writerAs[T any](w http.ResponseWriter) (T, bool) {
	for {
		if t, ok := w.(T); ok {
			return t, true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			var zero T
			return zero, false
		}
		w = u.Unwrap()
	}
}

var (
	streamBuffers = sync.Pool{New: func() any { b := make([]byte, streamBufferSize); return &b }}
	bodyBuffers   = sync.Pool{New: func() any { b := make([]byte, bodyBufferSize); return &b }}
)

// copyBody copies an upstream body to the client, flushing after every read when flush is set, so
// each SSE event leaves as soon as it arrives. It tells a read error (the replica failed) from a write
// error (the client left), which need different endings. It records the time to the first byte.
func copyBody(t *tracked, fl flusher, src io.Reader, flush bool) (rerr, werr error) {
	pool := &bodyBuffers
	if flush {
		pool = &streamBuffers
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	var last byte // the byte before this read, so an event end split across reads still counts
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if t.ttft == 0 {
				t.ttft = time.Since(t.start)
			}
			if flush {
				t.events += relay.CountEvents(buf[:n], &last)
			}
			if _, werr = t.Write(buf[:n]); werr != nil {
				return nil, werr
			}
			if flush && fl != nil {
				if werr = fl.FlushError(); werr != nil {
					return nil, werr
				}
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}
