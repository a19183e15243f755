package http

import (
	"bytes"
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
//
// An event stream (sse) is passed on up to its last line end: the start of a line the replica has
// not finished is held back (up to maxHeldLine bytes), so that a replica failing inside it leaves
// the client after a whole line, where an error event can still follow. line is where the data
// written stands.
func copyBody(t *tracked, fl flusher, src io.Reader, flush, sse bool) (rerr, werr error, line relay.LineState) {
	pool := &bodyBuffers
	if flush {
		pool = &streamBuffers
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	var last byte // the byte before this read, so an event end split across reads still counts
	var held []byte
	var tail relay.Tail // what was written, for line
	for {
		n, err := src.Read(buf)
		out := buf[:n]
		if n > 0 {
			if t.ttft == 0 {
				t.ttft = time.Since(t.start)
			}
			if flush {
				t.events += relay.CountEvents(out, &last)
			}
			if sse {
				out, held = wholeLines(out, held, err == io.EOF)
			}
		}
		if len(out) > 0 {
			if sse {
				tail.Add(out)
			}
			if _, werr = t.Write(out); werr != nil {
				return nil, werr, tail.Line()
			}
			if flush && fl != nil {
				if werr = fl.FlushError(); werr != nil {
					return nil, werr, tail.Line()
				}
			}
		}
		if err == io.EOF {
			if len(held) > 0 {
				tail.Add(held)
				if _, werr = t.Write(held); werr == nil && fl != nil {
					werr = fl.FlushError()
				}
			}
			return nil, werr, tail.Line()
		}
		if err != nil {
			return err, nil, tail.Line()
		}
	}
}

// maxHeldLine bounds the unfinished line copyBody holds back: a longer line is passed on as it
// arrives.
const maxHeldLine = 16 << 10

// wholeLines returns what of held followed by p can be written now, up to the last line end, and
// what is held back; at the body's end (or past maxHeldLine) nothing is held back.
func wholeLines(p, held []byte, end bool) (out, rest []byte) {
	cut := bytes.LastIndexByte(p, '\n') + 1
	if end || len(held)+len(p)-cut > maxHeldLine {
		cut = len(p)
	}
	out = p[:cut]
	if len(held) > 0 && cut > 0 {
		out = append(held, out...)
		held = nil
	}
	return out, append(held, p[cut:]...)
}
