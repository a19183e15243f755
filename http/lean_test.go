package http_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

// rawExchange sends request, as it is, on a new connection to addr and returns the answer's head as
// it came, and the answer.
func rawExchange(t *testing.T, addr, request string) (string, *http.Response, string) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.WriteString(nc, request)
	require.NoError(t, err)
	br := bufio.NewReader(nc)
	var raw strings.Builder
	for {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		raw.WriteString(line)
		if line == "\r\n" {
			break
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader(raw.String()), br)), nil)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return raw.String(), resp, string(b)
}

// withBody ends head (its lines, each with CRLF) with a Content-Length for body, and body.
func withBody(head, body string) string {
	return head + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// A plain non-stream request (one the lean path takes) and the same request with a Connection
// header (which sends it down the full path) are answered alike, and reach the replica alike: the
// same headers forwarded, dropped and added, the client's request ID kept. Only the order of the
// answer's headers tells the two paths apart: the lean path keeps the replica's and puts the
// request ID last.
func TestLeanAndFullPathsAnswerAlike(t *testing.T) {
	var mu sync.Mutex
	var got []http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answerProbes(w, r, "m") {
			return
		}
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		got = append(got, r.Header.Clone())
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Request-Id", "the-replica's")
		w.Header().Set("Zz-Replica", "kept")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"answer":true}`)
	}))
	defer up.Close()
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{APIKeys: []string{"k1"}}})
	addURL(t, p, up.URL)
	addr := strings.TrimPrefix(p.URL, "http://")

	head := "POST /v1/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nAuthorization: Bearer k1\r\n" +
		"Content-Type: application/json\r\nX-Custom: yes\r\nX-Forwarded-For: 10.1.2.3\r\nX-Request-Id: cid-1\r\n" +
		"X-Forwarded-For: 10.4.5.6\r\n" +
		"Proxy-Authorization: Basic x\r\nKeep-Alive: timeout=5\r\n"
	body := `{"model":"m","messages":[]}`
	leanRaw, lean, leanBody := rawExchange(t, addr, withBody(head, body))
	fullRaw, full, fullBody := rawExchange(t, addr, withBody(head+"Connection: keep-alive\r\n", body))

	require.Equal(t, http.StatusCreated, lean.StatusCode)
	require.Equal(t, full.StatusCode, lean.StatusCode)
	require.Equal(t, `{"answer":true}`, leanBody)
	require.Equal(t, fullBody, leanBody)
	for _, h := range []http.Header{lean.Header, full.Header} {
		h.Del("Date")
	}
	require.Equal(t, full.Header, lean.Header)
	require.Equal(t, "cid-1", lean.Header.Get("X-Request-Id"))
	require.True(t, strings.HasSuffix(leanRaw, "X-Request-Id: cid-1\r\n\r\n"), "the lean path served it:\n%s", leanRaw)
	require.False(t, strings.HasSuffix(fullRaw, "X-Request-Id: cid-1\r\n\r\n"), "the full path served it:\n%s", fullRaw)

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, got, 2)
	require.Equal(t, got[1], got[0])
	require.Equal(t, "cid-1", got[0].Get("X-Request-Id"))
	require.Equal(t, "10.1.2.3, 10.4.5.6, 127.0.0.1", got[0].Get("X-Forwarded-For"))
	require.Equal(t, addr, got[0].Get("X-Forwarded-Host"))
	require.Equal(t, "http", got[0].Get("X-Forwarded-Proto"))
	require.Equal(t, "Bearer k1", got[0].Get("Authorization"))
	require.Equal(t, "yes", got[0].Get("X-Custom"))
	require.Empty(t, got[0].Get("Proxy-Authorization"))
	require.Empty(t, got[0].Get("Keep-Alive"))
	p.WaitIdle(t, 2*time.Second)
}

// A lean request without a Content-Type reaches the replica as JSON, as on the full path; one with
// a wrong API key gets the full path's 401.
func TestLeanRequestWithoutContentTypeOrKey(t *testing.T) {
	up := startFixedUpstream(t, http.StatusOK, "application/json", []byte(`{}`))
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{APIKeys: []string{"k1"}}})
	addURL(t, p, up.URL)
	addr := strings.TrimPrefix(p.URL, "http://")
	head := "POST /v1/completions HTTP/1.1\r\nHost: " + addr + "\r\n"
	_, resp, _ := rawExchange(t, addr, withBody(head+"Authorization: Bearer k1\r\n", `{"model":"fixed"}`))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_, got := up.last(t)
	require.Equal(t, "application/json", got.Get("Content-Type"))
	_, resp, body := rawExchange(t, addr, withBody(head+"Authorization: Bearer k2\r\n", `{"model":"fixed"}`))
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, body)
	p.WaitIdle(t, 2*time.Second)
}

// The requests the lean path leaves to the full path get the full path's answers: a bad or too
// large Content-Length, a chunked body, a query, HTTP/1.0, a CORS request, a stream.
func TestLeanLeavesOtherRequestsToTheFullPath(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{MaxBody: 100}}, 1, proxytest.ReplicaConfig{})
	addr := strings.TrimPrefix(p.URL, "http://")
	head := "POST /v1/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\n"
	body := `{"model":"sim-model"}`
	cases := []struct {
		name, request string
		status        int
		header        string // one the answer must have
	}{
		{"signed length", head + "Content-Length: +21\r\n\r\n" + body, http.StatusBadRequest, ""},
		{"too large", withBody(head, `{"model":"sim-model","pad":"`+strings.Repeat("x", 100)+`"}`), http.StatusRequestEntityTooLarge, ""},
		{"chunked", head + "Transfer-Encoding: chunked\r\n\r\n15\r\n" + body + "\r\n0\r\n\r\n", http.StatusOK, ""},
		{"query", withBody("POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: "+addr+"\r\n", body), http.StatusOK, ""},
		{"HTTP/1.0", withBody("POST /v1/chat/completions HTTP/1.0\r\n", body), http.StatusOK, ""},
		{"CORS", withBody(head+"Origin: http://example.com\r\n", body), http.StatusOK, "Access-Control-Allow-Origin"},
		{"stream", withBody(head, `{"model":"sim-model","stream":true}`), http.StatusOK, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, resp, answer := rawExchange(t, addr, c.request)
			require.Equal(t, c.status, resp.StatusCode, answer)
			if c.header != "" {
				require.NotEmpty(t, resp.Header.Get(c.header))
			}
		})
	}
	p.WaitIdle(t, 2*time.Second)
}

// rawReplica answers every inference request with answer, written as it is on the raw connection,
// which it then closes.
func rawReplica(t *testing.T, answer string) string {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answerProbes(w, r, "m") {
			return
		}
		io.Copy(io.Discard, r.Body)
		c, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		bw.WriteString(answer)
		bw.Flush()
	}))
	t.Cleanup(up.Close)
	return up.URL
}

// The answers the lean path does not pass on itself are handed over to the full path, which
// answers them as it answers any: an event stream, a chunked answer, an answer without a
// Content-Type, with a hop-by-hop header or without a Date, a long one, and one cut before its
// Content-Length.
func TestLeanHandsOverWhatItCannotPassOn(t *testing.T) {
	date := "Date: " + time.Now().UTC().Format(http.TimeFormat) + "\r\n"
	long := strings.Repeat("x", 40<<10)
	cases := []struct {
		name, answer string
		status       int
		body         string // the client's, or a part of it for a 502
		header       string // one the client must not get
	}{
		{"event stream", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + date + "Content-Length: 15\r\n\r\ndata: {\"a\":1}\n\n",
			http.StatusOK, "data: {\"a\":1}\n\n", ""},
		{"chunked", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + date + "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
			http.StatusOK, "{}", ""},
		{"no content type", "HTTP/1.1 200 OK\r\n" + date + "Content-Length: 2\r\n\r\n{}", http.StatusOK, "{}", ""},
		{"hop-by-hop header", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nKeep-Alive: timeout=1\r\n" + date + "Content-Length: 2\r\n\r\n{}",
			http.StatusOK, "{}", "Keep-Alive"},
		{"no date", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", http.StatusOK, "{}", ""},
		{"long", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + date + "Content-Length: " + strconv.Itoa(len(long)) + "\r\n\r\n" + long,
			http.StatusOK, long, ""},
		{"cut", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + date + "Content-Length: 100\r\n\r\n{\"partial",
			http.StatusBadGateway, "the replica failed mid-answer", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
			addURL(t, p, rawReplica(t, c.answer))
			code, h, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "m"})
			require.Equal(t, c.status, code, string(body))
			if c.status == http.StatusOK {
				require.Equal(t, c.body, string(body))
			} else {
				require.Contains(t, string(body), c.body)
			}
			require.NotEmpty(t, h.Get("X-Request-Id"))
			require.NotEmpty(t, h.Get("Date"))
			if c.header != "" {
				require.Empty(t, h.Get(c.header))
			}
			p.WaitIdle(t, 2*time.Second)
		})
	}
}
