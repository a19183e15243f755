package http_test

import (
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
		if answerProbes(w, req, "raw") {
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

// startProxyWith starts a proxy with replica registered, served over TLS when secure (its
// streams are then copied, not relayed), and returns a client that trusts it.
func startProxyWith(t *testing.T, secure bool, replica string) (*proxytest.Proxy, *http.Client) {
	t.Helper()
	cfg, client := proxytest.ProxyConfig{}, http.DefaultClient
	if secure {
		certs := httptest.NewTLSServer(http.NotFoundHandler())
		t.Cleanup(certs.Close)
		cfg.HTTP.TLS = certs.TLS.Clone()
		client = certs.Client()
	}
	p := proxytest.StartProxy(t, cfg)
	add, err := client.Post(p.URL+"/nodes/add", "application/json", strings.NewReader(`{"url":"`+replica+`"}`))
	require.NoError(t, err)
	add.Body.Close()
	require.Equal(t, http.StatusOK, add.StatusCode)
	return p, client
}

// A replica that fails inside an SSE event: what the client got of the stream ends with whole
// lines, then one error event and a clean end (SPEC §7). The unfinished chunk or line is held back
// and dropped (the relay, which passes whole chunks on unchanged, holds a chunk that ends inside a
// line until a later one ends the line); an event left open after a whole line is ended by a blank
// line first. Both ways of passing a stream on are covered: the relay (plain HTTP/1.1 clients) and
// the copy (TLS clients).
func TestStreamCutInsideAnEvent(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events []string // whole chunks
		tail   string   // then this, then the connection closes
		want   []string // the data lines the client gets, before the error event
	}{
		{"inside a chunk", []string{"data: {\"i\":0}\n\n"}, "e\r\ndata: {\"i\"", []string{`{"i":0}`}},
		{"inside a chunk's size", []string{"data: {\"i\":0}\n\n"}, "1", []string{`{"i":0}`}},
		{"after a whole line", []string{"data: {\"i\":0}\n\n", "data: {\"i\":1}\n"}, "", []string{`{"i":0}`, `{"i":1}`}},
		{"a chunk ending inside a line", []string{"data: {\"i\":0}\n\n", "data: {\"i\""}, "", []string{`{"i":0}`}},
		{"a line over two chunks", []string{"data: {\"i\":0}\n\n", "data: {\"i\"", ":1}\n\n", "data: {\"i\""}, "",
			[]string{`{"i":0}`, `{"i":1}`}},
	} {
		for _, secure := range []bool{false, true} {
			name := tc.name + "/relay"
			if secure {
				name = tc.name + "/copy"
			}
			t.Run(name, func(t *testing.T) {
				rep := startRawStreamReplica(t, tc.events, tc.tail)
				p, client := startProxyWith(t, secure, rep.URL)

				resp, err := client.Post(p.URL+"/v1/chat/completions", "application/json",
					strings.NewReader(`{"model":"raw","stream":true}`))
				require.NoError(t, err)
				defer resp.Body.Close()
				require.Equal(t, http.StatusOK, resp.StatusCode)
				got, err := io.ReadAll(resp.Body)
				require.NoError(t, err, "%q", got)
				events := strings.Split(strings.TrimSuffix(string(got), "\n\n"), "\n\n")
				require.Len(t, events, len(tc.want)+1, "%q", got)
				for i, w := range tc.want {
					require.Equal(t, "data: "+w, events[i], "%q", got)
				}
				require.True(t, strings.HasPrefix(events[len(tc.want)], `data: {"error":`), "%q", got)
				p.WaitIdle(t, 5*time.Second)
			})
		}
	}
}

// A replica that fails between two events gets one error event after them and a clean end, as
// with every other mid-stream failure.
func TestStreamCutBetweenEventsEndsWithAnErrorEvent(t *testing.T) {
	rep := startRawStreamReplica(t, []string{"data: {\"i\":0}\n\n", "data: {\"i\":1}\n\n"}, "")
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, rep.URL)

	events := streamEvents(t, p.URL+"/v1/chat/completions", `{"model":"raw","stream":true}`)
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

// Only an event stream is held back to whole lines: other streamed answers pass as they arrive,
// over the relay and over the copy (TLS clients), a line without its end included. A compressed
// event stream is one of the others: its bytes never form a line.
func TestStreamedNonSSEAnswersAreNotHeld(t *testing.T) {
	for _, c := range []struct{ name, contentType, encoding string }{
		{"bytes", "application/octet-stream", ""},
		{"gzip events", "text/event-stream", "gzip"},
	} {
		for _, secure := range []bool{false, true} {
			t.Run(c.name+map[bool]string{false: " relay", true: " copy"}[secure], func(t *testing.T) {
				release := make(chan struct{})
				rep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
					if answerProbes(w, req, "raw") {
						return
					}
					w.Header().Set("Content-Type", c.contentType)
					if c.encoding != "" {
						w.Header().Set("Content-Encoding", c.encoding)
					}
					io.WriteString(w, "no line end yet")
					w.(http.Flusher).Flush()
					select {
					case <-release:
					case <-req.Context().Done():
					}
				}))
				defer rep.Close()
				defer close(release)
				p, client := startProxyWith(t, secure, rep.URL)

				req, err := http.NewRequest(http.MethodPost, p.URL+"/v1/chat/completions", strings.NewReader(`{"model":"raw","stream":true}`))
				require.NoError(t, err)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept-Encoding", "gzip") // asked for: the client's transport passes the bytes as they are
				resp, err := client.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				require.Equal(t, c.encoding, resp.Header.Get("Content-Encoding"))
				got := make([]byte, len("no line end yet"))
				read := make(chan error, 1)
				go func() { _, err := io.ReadFull(resp.Body, got); read <- err }()
				select {
				case err := <-read:
					require.NoError(t, err)
					require.Equal(t, "no line end yet", string(got))
				case <-time.After(5 * time.Second):
					t.Fatal("the bytes waited for a line end")
				}
			})
		}
	}
}
