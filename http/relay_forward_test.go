package http_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/proxytest"
)

// rawStreamReplica answers chat completions with hand-written chunked SSE bytes: the whole chunks
// in events, then tail (a partial chunk, or nothing), then it closes the connection. It counts
// the connections the proxy opened to it.
type rawStreamReplica struct {
	*httptest.Server
	conns atomic.Int64
}

func startRawStreamReplica(t *testing.T, events []string, tail string) *rawStreamReplica {
	r := &rawStreamReplica{}
	r.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/v1/models":
			io.WriteString(w, `{"object":"list","data":[{"id":"raw"}]}`)
			return
		case "/health":
			io.WriteString(w, `{"status":"healthy"}`)
			return
		}
		io.Copy(io.Discard, req.Body)
		conn, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		for _, e := range events {
			fmt.Fprintf(bw, "%x\r\n%s\r\n", len(e), e)
		}
		bw.WriteString(tail)
		bw.Flush()
	}))
	r.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.conns.Add(1)
		}
	}
	r.Start()
	t.Cleanup(r.Close)
	return r
}

// A replica that fails in the middle of an SSE event cuts the client's connection: the client
// must see a broken answer, never an answer that looks complete, and no error event glued onto
// half an event. The request leaves nothing counted.
func TestStreamCutInsideAnEventCutsTheClient(t *testing.T) {
	rep := startRawStreamReplica(t, []string{"data: {\"i\":0}\n\n"}, "e\r\ndata: {\"i\"")
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, rep.URL)

	resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"raw","stream":true}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	got, err := io.ReadAll(resp.Body)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF, "a cut answer, not a clean end: %q", got)
	require.True(t, strings.HasPrefix(string(got), "data: {\"i\":0}\n\n"), "%q", got)
	require.NotContains(t, string(got), `"error"`)
	p.WaitIdle(t, 5*time.Second)
}

// A replica that fails between two events gets one error event after them and a clean end, as
// with every other mid-stream failure.
func TestStreamCutBetweenEventsEndsWithAnErrorEvent(t *testing.T) {
	rep := startRawStreamReplica(t, []string{"data: {\"i\":0}\n\n", "data: {\"i\":1}\n\n"}, "")
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, rep.URL)

	resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"raw","stream":true}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, d)
		}
	}
	require.NoError(t, sc.Err())
	require.Len(t, events, 3, "%q", events)
	require.Contains(t, events[2], `"error"`)
	p.WaitIdle(t, 5*time.Second)
}

// Streams that end cleanly leave the replica's connection reusable: twenty streams one after the
// other take one connection, and each arrives whole.
func TestStreamsReuseTheReplicaConnection(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]bool{} // the client addresses that carried a chat request
	rep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/v1/models":
			io.WriteString(w, `{"object":"list","data":[{"id":"kept"}]}`)
			return
		case "/health":
			io.WriteString(w, `{"status":"healthy"}`)
			return
		}
		io.Copy(io.Discard, req.Body)
		mu.Lock()
		conns[req.RemoteAddr] = true
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := 0; i < 5; i++ {
			fmt.Fprintf(w, "data: {\"i\":%d}\n\n", i)
			rc.Flush()
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(rep.Close)
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, rep.URL)
	for i := 0; i < 20; i++ {
		events := streamEvents(t, p.URL+"/v1/chat/completions", `{"model":"kept","stream":true}`)
		require.Len(t, events, 6, "five events and [DONE]: %q", events)
		require.Equal(t, "[DONE]", events[5])
	}
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, conns, 1, "one connection for twenty streams")
	p.WaitIdle(t, 5*time.Second)
}
