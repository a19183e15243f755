package http_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/proxytest"
)

// fixedUpstream is a replica that answers every inference request with fixed bytes and records
// what it received: byte-exactness needs an answer that does not change between two requests.
type fixedUpstream struct {
	*httptest.Server
	status      int
	contentType string
	answer      []byte

	mu     sync.Mutex
	bodies [][]byte
	heads  []http.Header
}

func startFixedUpstream(t *testing.T, status int, contentType string, answer []byte) *fixedUpstream {
	f := &fixedUpstream{status: status, contentType: contentType, answer: answer}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answerProbes(w, r, "fixed") {
			return
		}
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.bodies = append(f.bodies, b)
		f.heads = append(f.heads, r.Header.Clone())
		f.mu.Unlock()
		w.Header().Set("Content-Type", f.contentType)
		w.Header().Set("X-Replica-Header", "kept")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "dropped")
		w.WriteHeader(f.status)
		w.Write(f.answer)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fixedUpstream) last(t *testing.T) ([]byte, http.Header) {
	f.mu.Lock()
	defer f.mu.Unlock()
	require.NotEmpty(t, f.bodies)
	return f.bodies[len(f.bodies)-1], f.heads[len(f.heads)-1]
}

func addURL(t *testing.T, p *proxytest.Proxy, url string) {
	t.Helper()
	code, body := p.Post(t, "/nodes/add", map[string]any{"url": url})
	require.Equal(t, http.StatusOK, code, string(body))
}

// answerProbes answers the proxy's model list and health probes for a replica serving model, and
// reports whether req was one.
func answerProbes(w http.ResponseWriter, req *http.Request, model string) bool {
	switch req.URL.Path {
	case "/v1/models":
		io.WriteString(w, `{"object":"list","data":[{"id":"`+model+`"}]}`)
	case "/health":
		io.WriteString(w, `{"status":"healthy"}`)
	default:
		return false
	}
	return true
}

// A request body with odd spacing, key order, unicode escapes and unknown fields must reach the
// replica unchanged, and the replica's answer must reach the client unchanged.
func TestForwardIsByteExact(t *testing.T) {
	for _, path := range []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"} {
		t.Run(path, func(t *testing.T) {
			answer := []byte("{\"id\":  \"x\", \"weird\" : [1,2 ,3],\n\"u\":\"\\u00e9\"}")
			up := startFixedUpstream(t, http.StatusOK, "application/json", answer)
			p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
			addURL(t, p, up.URL)
			req := []byte("{ \"zeta\": 1,\n  \"model\" :\"fixed\", \"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\"}], \"extra\": {\"a\": null} }")
			code, h, body := postJSON(t, p.URL+path+"?q=1", req)
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, answer, body)
			got, _ := up.last(t)
			require.Equal(t, req, got)
			require.Equal(t, "kept", h.Get("X-Replica-Header"))
			require.Empty(t, h.Get("X-Hop"), "headers named in Connection are hop-by-hop")
			p.WaitIdle(t, 2*time.Second)
		})
	}
}

func TestForwardPassesErrorStatusThrough(t *testing.T) {
	answer := []byte(`{"object":"error","message":"bad things","code":400}`)
	up := startFixedUpstream(t, http.StatusBadRequest, "application/json", answer)
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, up.URL)
	code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "fixed", "stream": true})
	require.Equal(t, http.StatusBadRequest, code, "a non-2xx before the first event is passed through, not a 200 stream")
	require.Equal(t, answer, body)
	p.WaitIdle(t, 2*time.Second)
}

func TestForwardHeaders(t *testing.T) {
	up := startFixedUpstream(t, http.StatusOK, "application/json", []byte(`{}`))
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, up.URL)

	code, h, _ := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "fixed"},
		"X-Request-Id", "client-id-1", "X-Forwarded-For", "10.1.2.3", "X-Custom", "yes",
		"Connection", "X-Secret-Hop", "X-Secret-Hop", "no", "Proxy-Authorization", "Basic x")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "client-id-1", h.Get("X-Request-Id"))
	_, got := up.last(t)
	require.Equal(t, "client-id-1", got.Get("X-Request-Id"))
	require.Equal(t, "10.1.2.3, 127.0.0.1", got.Get("X-Forwarded-For"))
	require.Equal(t, strings.TrimPrefix(p.URL, "http://"), got.Get("X-Forwarded-Host"))
	require.Equal(t, "http", got.Get("X-Forwarded-Proto"))
	require.Equal(t, "yes", got.Get("X-Custom"))
	require.Empty(t, got.Get("X-Secret-Hop"))
	require.Empty(t, got.Get("Proxy-Authorization"))

	code, h, _ = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "fixed"})
	require.Equal(t, http.StatusOK, code)
	require.NotEmpty(t, h.Get("X-Request-Id"), "an ID is made when the client sends none")
	_, got = up.last(t)
	require.Equal(t, h.Get("X-Request-Id"), got.Get("X-Request-Id"))
}

func TestChatAndCompletionsThroughSimulatedReplicas(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{Tokens: 5})
	for _, path := range []string{"/v1/chat/completions", "/v1/completions"} {
		code, _, body := postJSON(t, p.URL+path, map[string]any{"model": "sim-model", "prompt": "x", "messages": []any{}})
		require.Equal(t, http.StatusOK, code, string(body))
		require.Contains(t, decode(t, body), "usage")

		events := streamEvents(t, p.URL+path, `{"model":"sim-model","stream":true,"prompt":"x","messages":[]}`)
		require.Len(t, events, 6, "5 tokens and [DONE]")
		require.Equal(t, "[DONE]", events[len(events)-1])
	}
	p.WaitIdle(t, 2*time.Second)
	total := 0
	for _, r := range reps {
		total += len(r.Requests("/v1/chat/completions")) + len(r.Requests("/v1/completions"))
	}
	require.Equal(t, 4, total)
}

// streamEvents posts a stream request and returns the data of every SSE event.
func streamEvents(t testing.TB, url, body string) []string {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", strings.Split(resp.Header.Get("Content-Type"), ";")[0])
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, d)
		}
	}
	require.NoError(t, sc.Err())
	return events
}

// Each event must reach the client when the replica sends it, not when the answer ends.
func TestStreamEventsAreFlushedAsTheyArrive(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{Tokens: 3})
	reps[0].SetTiming(0, time.Hour, 3) // the second token would come after an hour
	resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"sim-model","stream":true}`))
	require.NoError(t, err)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "data: {"), line)
	resp.Body.Close()
	p.WaitIdle(t, 2*time.Second)
}

func TestInferenceErrors(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttpConfig(1024)}, 1, proxytest.ReplicaConfig{})
	prefill := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"prefill-only"}, Role: "Prefill"})
	p.MustAdd(t, prefill)
	cases := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		code        int
	}{
		{"not JSON", "POST", "/v1/chat/completions", "application/json", `{"model":`, 400},
		{"array", "POST", "/v1/chat/completions", "application/json", `[{"model":"sim-model"}]`, 400},
		{"no model", "POST", "/v1/chat/completions", "application/json", `{"messages":[]}`, 400},
		{"model not string", "POST", "/v1/completions", "application/json", `{"model":3}`, 400},
		{"stream not bool", "POST", "/v1/completions", "application/json", `{"model":"sim-model","stream":"yes"}`, 400},
		{"n not integer", "POST", "/v1/completions", "application/json", `{"model":"sim-model","n":1.5}`, 400},
		{"empty", "POST", "/v1/completions", "application/json", ``, 400},
		{"invalid UTF-8", "POST", "/v1/completions", "application/json", "{\"model\":\"\xff\"}", 400},
		{"unknown model", "POST", "/v1/chat/completions", "application/json", `{"model":"nope"}`, 404},
		{"wrong method", "GET", "/v1/chat/completions", "", ``, 405},
		{"wrong method on models", "POST", "/v1/models", "application/json", `{"model":"sim-model"}`, 405},
		{"too large", "POST", "/v1/chat/completions", "application/json", `{"model":"sim-model","x":"` + strings.Repeat("a", 2000) + `"}`, 413},
		{"wrong content type", "POST", "/v1/chat/completions", "text/plain", `{"model":"sim-model"}`, 415},
		{"no replica of the role", "POST", "/v1/chat/completions", "application/json", `{"model":"prefill-only"}`, 503},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, body := do(t, c.method, p.URL+c.path, c.contentType, []byte(c.body))
			require.Equal(t, c.code, code, string(body))
			requireOpenAIError(t, body, c.code)
		})
	}
	p.WaitIdle(t, 2*time.Second)
	require.Empty(t, reps[0].Requests("/v1/chat/completions"), "bad input never reaches a replica")
}

// requireOpenAIError checks the error body of SPEC §4: the nested object and the flat copy.
func requireOpenAIError(t testing.TB, body []byte, code int) {
	t.Helper()
	m := decode(t, body)
	nested, ok := m["error"].(map[string]any)
	require.True(t, ok, "nested error object: %s", body)
	require.NotEmpty(t, nested["message"])
	require.NotEmpty(t, nested["type"])
	require.Contains(t, nested, "param")
	require.EqualValues(t, code, nested["code"])
	require.Equal(t, "error", m["object"])
	require.Equal(t, nested["message"], m["message"])
	require.Equal(t, nested["type"], m["type"])
	require.EqualValues(t, code, m["code"])
	require.NotContains(t, string(body), "1040", "no proxy-specific codes")
}

func TestUnreachableReplicaIs502AndTimeoutIs504(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttpTimeout(300 * time.Millisecond)}, 1, proxytest.ReplicaConfig{})
	reps[0].SetFault(proxytest.Fault{Hang: true})
	code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
	require.Equal(t, http.StatusGatewayTimeout, code)
	requireOpenAIError(t, body, 504)

	reps[0].SetFault(proxytest.Fault{CutAfter: -1})
	code, _, body = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
	require.Equal(t, http.StatusBadGateway, code)
	requireOpenAIError(t, body, 502)
	p.WaitIdle(t, 2*time.Second)
}

func TestMidStreamFailureEndsWithOneErrorEvent(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{Tokens: 10})
	reps[0].SetFault(proxytest.Fault{CutAfter: 3})
	events := streamEvents(t, p.URL+"/v1/chat/completions", `{"model":"sim-model","stream":true}`)
	require.Len(t, events, 4)
	last := decode(t, []byte(events[3]))
	e := last["error"].(map[string]any)
	require.Equal(t, "server_error", e["type"])
	require.EqualValues(t, 502, e["code"])
	require.NotEmpty(t, e["message"])
	p.WaitIdle(t, 2*time.Second)
}

func TestRefusedConnectionIsRetriedOnAnotherReplica(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{})
	dead := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	p.MustAdd(t, dead)
	require.NoError(t, dead.Close()) // registered and healthy, but now refuses connections
	for i := 0; i < 4; i++ {
		code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
		require.Equal(t, http.StatusOK, code, string(body))
	}
	require.Len(t, reps[0].Requests("/v1/chat/completions"), 4)
	p.WaitIdle(t, 2*time.Second)
}

func TestGenericV1PathIsRouted(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{})
	code, _, body := postJSON(t, p.URL+"/v1/embeddings", map[string]any{"model": "sim-model", "input": "x"})
	require.Equal(t, http.StatusOK, code, string(body))
	require.Len(t, reps[0].Requests("/v1/embeddings"), 1)
	require.True(t, bytes.Contains(body, []byte("/v1/embeddings")))
}

// A body that names its model twice goes where the last one says: that is the model the replica
// itself will read (Python's json and Go's encoding/json keep the last of a duplicate key).
func TestDuplicateModelKeyRoutesByTheLast(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	first := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"m1"}})
	last := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"m2"}})
	p.MustAdd(t, first, last)
	code, _, body := do(t, http.MethodPost, p.URL+"/v1/chat/completions", "application/json",
		[]byte(`{"model":"m1","messages":[{"role":"user","content":"hi"}],"model":"m2"}`))
	require.Equal(t, http.StatusOK, code, string(body))
	require.Len(t, last.Requests("/v1/chat/completions"), 1)
	require.Empty(t, first.Requests("/v1/chat/completions"))
}

// cutReplica answers its first chat request with a head declaring length bytes and only part of
// them, then closes; later requests get {"whole":true}.
func cutReplica(t *testing.T, length int) *httptest.Server {
	var calls atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answerProbes(w, r, "m") {
			return
		}
		io.Copy(io.Discard, r.Body)
		if calls.Add(1) == 1 {
			c, bw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			fmt.Fprintf(bw, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", length)
			bw.WriteString(`{"partial":"` + strings.Repeat("x", length/2))
			bw.Flush()
			c.Close()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"whole":true}`)
	}))
	t.Cleanup(up.Close)
	return up
}

// A short non-stream answer whose replica closes before its Content-Length becomes a 502 with a
// JSON error, on a client connection that stays usable; the next request gets a fresh replica
// connection and a whole answer.
func TestNonStreamAnswerCutBeforeItsLength(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, cutReplica(t, 1000).URL)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	var conns atomic.Int32
	client := &http.Client{Transport: tr}
	post := func() (int, []byte) {
		req, err := http.NewRequest(http.MethodPost, p.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
		require.NoError(t, err)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) {
				if !i.Reused {
					conns.Add(1)
				}
			},
		}))
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, body
	}
	code, body := post()
	require.Equal(t, http.StatusBadGateway, code, string(body))
	require.Contains(t, string(body), "the replica failed mid-answer")
	require.Contains(t, string(body), `"type"`)
	code, body = post()
	require.Equal(t, http.StatusOK, code, string(body))
	require.JSONEq(t, `{"whole":true}`, string(body))
	require.Equal(t, int32(1), conns.Load(), "the client's connection was not kept")
	p.WaitIdle(t, 2*time.Second)
}

// A short non-stream answer whose replica stalls inside its body past --upstream-timeout becomes a
// 504 with a JSON error: nothing of it had been written.
func TestNonStreamAnswerStalledPastTheUpstreamTimeout(t *testing.T) {
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
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\":")
		bw.Flush()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c) // until the proxy gives up and closes its end
	}))
	defer up.Close()
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttpTimeout(200 * time.Millisecond)})
	addURL(t, p, up.URL)

	code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "m"})
	require.Equal(t, http.StatusGatewayTimeout, code, string(body))
	require.Contains(t, string(body), "upstream timeout")
	p.WaitIdle(t, 2*time.Second)
}

// A long non-stream answer passes on as it arrives: cut before its Content-Length, it has begun,
// so the proxy breaks the client's connection rather than end it as whole.
func TestLongNonStreamAnswerCutBreaksTheConnection(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, cutReplica(t, 200<<10).URL)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Post(p.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"m"}`))
	if err == nil {
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Error(t, rerr, "a cut answer passed on as whole: %d, %d bytes", resp.StatusCode, len(body))
	}
	code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "m"})
	require.Equal(t, http.StatusOK, code, string(body))
	require.JSONEq(t, `{"whole":true}`, string(body))
	p.WaitIdle(t, 2*time.Second)
}

// A request without Content-Type is taken as JSON (as LMDeploy's proxy takes it) and reaches the
// replica as application/json: LMDeploy's api_server refuses a JSON endpoint's request without one.
// A client's own Content-Type goes as it came.
func TestForwardWithoutContentType(t *testing.T) {
	up := startFixedUpstream(t, http.StatusOK, "application/json", []byte(`{}`))
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, up.URL)

	code, _, body := do(t, http.MethodPost, p.URL+"/v1/chat/completions", "", []byte(`{"model":"fixed"}`))
	require.Equal(t, http.StatusOK, code, string(body))
	_, got := up.last(t)
	require.Equal(t, []string{"application/json"}, got.Values("Content-Type"))

	code, _, body = do(t, http.MethodPost, p.URL+"/v1/chat/completions", "application/json; charset=utf-8", []byte(`{"model":"fixed"}`))
	require.Equal(t, http.StatusOK, code, string(body))
	_, got = up.last(t)
	require.Equal(t, []string{"application/json; charset=utf-8"}, got.Values("Content-Type"))
}

// An HTTP/1.0 request may come without Host: the replica then gets no X-Forwarded-Host rather than an
// empty one.
func TestForwardWithoutHost(t *testing.T) {
	up := startFixedUpstream(t, http.StatusOK, "application/json", []byte(`{}`))
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, up.URL)
	conn, err := net.Dial("tcp", strings.TrimPrefix(p.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	body := `{"model":"fixed"}`
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_, got := up.last(t)
	require.NotContains(t, got, "X-Forwarded-Host")
	require.Equal(t, "http", got.Get("X-Forwarded-Proto"))
}
