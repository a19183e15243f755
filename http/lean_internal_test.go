package http

import (
	"net/http"
	"strings"
	"testing"
)

// The lean path's own lists of hop-by-hop headers (leanHeaderOf for a client's, plainAnswer for a
// replica's) must name every header of hopHeaders: one they missed would be forwarded.
func TestLeanListsEveryHopHeader(t *testing.T) {
	for _, h := range hopHeaders {
		if k := leanHeaderOf([]byte(h)); k != leanDropped && k != leanRefused {
			t.Errorf("a client's %s is forwarded by the lean path", h)
		}
		if h == "Connection" || h == "Transfer-Encoding" {
			continue // such answer heads are never parsed in place (lengthFramed)
		}
		lines := "Content-Type: application/json\r\nDate: x\r\n" + h + ": y\r\n"
		resp := &http.Response{Body: &pooledBody{lines: lines}, ContentLength: 2}
		if _, plain := plainAnswer(resp); plain {
			t.Errorf("a replica's %s is passed on by the lean path", strings.ToLower(h))
		}
	}
}
