package main

import (
	"io"
	"sync"
	"time"
)

// maxLogBatch is how much a logBatch holds before it writes without waiting for its interval.
const maxLogBatch = 64 << 10

// logBatch collects whole log lines (the access log's, one per request) and writes them to out in
// one call at most interval after the first of them, or once maxLogBatch bytes are waiting: a
// write(2) per request was the largest cost of a short request at the default level (+45% CPU at
// one request at a time). Lines written through Direct (everything but the access log) go out at
// once, after the lines waiting, so the order of all lines is kept. A crash loses at most one
// interval of access lines; Close writes what waits.
type logBatch struct {
	mu       sync.Mutex
	out      io.Writer
	interval time.Duration
	buf      []byte
	armed    bool // a flush is scheduled
	closed   bool
}

func newLogBatch(out io.Writer, interval time.Duration) *logBatch {
	return &logBatch{out: out, interval: interval}
}

// Write holds p, a whole line (logrus writes each entry with one call).
func (b *logBatch) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.out.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= maxLogBatch {
		return len(p), b.flushLocked()
	}
	if !b.armed {
		b.armed = true
		time.AfterFunc(b.interval, b.flush)
	}
	return len(p), nil
}

func (b *logBatch) flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.armed = false
	b.flushLocked()
}

func (b *logBatch) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.out.Write(b.buf)
	if cap(b.buf) > 2*maxLogBatch {
		b.buf = nil // after a burst, do not keep its memory
	} else {
		b.buf = b.buf[:0]
	}
	return err
}

// Direct returns a writer whose lines go out at once, after the lines waiting.
func (b *logBatch) Direct() io.Writer { return directWriter{b} }

type directWriter struct{ b *logBatch }

func (d directWriter) Write(p []byte) (int, error) {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if err := d.b.flushLocked(); err != nil {
		return 0, err
	}
	return d.b.out.Write(p)
}

// Close writes the lines waiting; later lines go out at once.
func (b *logBatch) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return b.flushLocked()
}
