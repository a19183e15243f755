package http

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/lmproxy/lmproxy/http/relay"
)

// rawWriter is an answer that can hand its client's socket to the relay (h1's).
type rawWriter interface {
	RawChunked() int
	RawDone(written int64, ended, atBoundary bool)
}

var (
	// errStreamCut is a relayed body that stopped before its end without another error.
	errStreamCut = errors.New("the answer stopped before its end")
	// errRelayClosed is a stream that arrived as the server closed.
	errRelayClosed = errors.New("the proxy is shutting down")
)

// relayBody passes a replica's chunked stream to the client on the relay's event loops, bytes and
// chunk framing unchanged, when both sockets are plain TCP and the client's answer is chunked too.
// It reports relayed false when it could not start (nothing was done then, and the caller copies
// the body itself); otherwise, like copyBody, a read error (the replica failed, or ctx ended) or a
// write error (the client left), and where the data the client got stands: MidLine unless it got
// whole chunks ending with a whole line, after which an error event can still follow.
func (s *Server) relayBody(ctx context.Context, t *tracked, resp *http.Response, sse bool) (rerr, werr error, line relay.LineState, relayed bool) {
	pb, ok := resp.Body.(*pooledBody)
	if s.relay == nil || !ok || pb.c.fd < 0 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		return nil, nil, relay.EventEnd, false
	}
	rw, ok := writerAs[rawWriter](t.ResponseWriter)
	if !ok {
		return nil, nil, relay.EventEnd, false
	}
	client := rw.RawChunked()
	if client < 0 {
		return nil, nil, relay.EventEnd, false
	}
	// What the replica sent with its headers is still in the connection's read buffer; the buffer
	// goes back to its pool for the stream's life.
	var head []byte
	if n := pb.c.br.Buffered(); n > 0 {
		buffered, _ := pb.c.br.Peek(n)
		head = append([]byte(nil), buffered...)
	}
	pb.c.br.Discard(len(head))
	pb.c.dropReader()
	res, ok := s.relay.Run(ctx, pb.c.fd, client, head, sse)
	if !ok {
		res = relay.Result{UpErr: errRelayClosed} // the server is closing; nothing was written
	}
	rw.RawDone(res.Written, res.Ended, res.Line != relay.MidLine)
	pb.finish(res.Ended && res.Reusable)
	t.written += res.Written
	t.events += res.Events
	if t.ttft == 0 && !res.FirstByte.IsZero() {
		t.ttft = res.FirstByte.Sub(t.start)
		if t.ttft <= 0 {
			t.ttft = time.Nanosecond
		}
	}
	switch {
	case res.ClientErr != nil:
		werr = res.ClientErr
	case res.Cancelled:
		if rerr = ctx.Err(); rerr == nil {
			rerr = errRelayClosed
		}
	case res.UpErr != nil:
		rerr = res.UpErr
	case !res.Ended:
		rerr = errStreamCut
	}
	return rerr, werr, res.Line, true
}
