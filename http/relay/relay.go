// Package relay moves the rest of a chunked answer from a replica's socket to a client's socket,
// bytes unchanged, on a few shared event loops. A goroutine per stream copying through a buffer
// pays, per SSE event, a read that finds nothing yet, a park and a wake-up in Go's scheduler, and
// holds its buffer for the stream's life; a loop reads only what epoll says is there, writes it at
// once, and shares one buffer among all its streams. Only the start and the end of a stream involve
// the caller's goroutine.
package relay

import (
	"errors"
	"time"
)

// Result is how a relayed body ended.
type Result struct {
	Written   int64     // bytes written to the client
	Events    int       // SSE event ends in the data
	FirstByte time.Time // when the first byte of the body arrived; zero if none did
	// Ended: the body's last chunk and trailer reached the client; the replica's connection can be
	// reused unless Reusable says otherwise.
	Ended    bool
	Reusable bool
	// Line (when not Ended): where the data the client got stands. EventEnd or LineEnd: the client
	// got whole chunks only and the answer can go on with another chunk (an error event, after a
	// blank line for LineEnd) and its end; a chunk the replica had not finished is held back for
	// that (see Run's hold). MidLine: nothing can follow.
	Line      LineState
	UpErr     error // the replica's side failed or ended early
	ClientErr error // a write to the client failed: it left
	Cancelled bool  // the context ended first
}

// ErrReplicaClosed is a replica that closed its connection before its body ended.
var ErrReplicaClosed = errors.New("the replica closed the connection mid-answer")
