package proxytest

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newClient returns a client with its own transport, closed after the test
// so no idle connection outlives it (the leak check would see it).
func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func post(t *testing.T, ctx context.Context, c *http.Client, url, body string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	return c.Do(req)
}

func mustPost(t *testing.T, c *http.Client, url, body string) *http.Response {
	t.Helper()
	resp, err := post(t, context.Background(), c, url, body)
	require.NoError(t, err)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func mustGet(t *testing.T, c *http.Client, url string) *http.Response {
	t.Helper()
	resp, err := c.Get(url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func decodeJSON(t *testing.T, resp *http.Response) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&m))
	return m
}

// readSSE returns the data payloads of a stream and the error that ended
// it (nil at a clean end).
func readSSE(r io.Reader) ([]string, error) {
	var events []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, data)
		}
	}
	return events, sc.Err()
}

func chunks(t *testing.T, events []string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, e := range events {
		if e == "[DONE]" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(e), &m), e)
		out = append(out, m)
	}
	return out
}

func TestReplicaModels(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Models: []string{"a", "b"}})
	c := newClient(t)

	m := decodeJSON(t, mustGet(t, c, r.URL+"/v1/models"))
	require.Equal(t, "list", m["object"])
	data := m["data"].([]any)
	require.Len(t, data, 2)
	card := data[0].(map[string]any)
	require.Equal(t, "a", card["id"])
	require.Equal(t, "model", card["object"])
	require.Equal(t, "lmdeploy", card["owned_by"])
	require.Equal(t, "a", card["root"])
	require.Contains(t, card, "parent")
	require.Nil(t, card["parent"])
	require.NotZero(t, card["created"])
	require.Len(t, card["permission"], 1)

	r.SetModels([]string{"c"})
	m = decodeJSON(t, mustGet(t, c, r.URL+"/v1/models"))
	require.Equal(t, "c", m["data"].([]any)[0].(map[string]any)["id"])
	require.Len(t, r.Requests("/v1/models"), 2)
}

func TestReplicaHealth(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)
	for _, tc := range []struct {
		set, body string
		code      int
	}{
		{"healthy", "healthy", 200},
		{"sleeping", "sleeping", 200},
		{"initializing", "initializing", 503},
		{"unhealthy", "unhealthy", 503},
	} {
		r.SetHealth(tc.set)
		resp := mustGet(t, c, r.URL+"/health")
		require.Equal(t, tc.code, resp.StatusCode, tc.set)
		require.Equal(t, tc.body, decodeJSON(t, resp)["status"], tc.set)
	}

	r.SetHealth("empty")
	resp := mustGet(t, c, r.URL+"/health")
	require.Equal(t, 200, resp.StatusCode)
	b, _ := io.ReadAll(resp.Body)
	require.Empty(t, b)

	r.SetHealth("error")
	resp = mustGet(t, c, r.URL+"/health")
	require.Equal(t, 500, resp.StatusCode)
	b, _ = io.ReadAll(resp.Body)
	require.False(t, json.Valid(b))

	r.SetHealth("hang")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+"/health", nil)
	_, err := c.Do(req)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Empty(t, r.Received(), "/health is not recorded")
}

func TestReplicaChatNonStream(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Models: []string{"m"}, Tokens: 5, TTFT: 20 * time.Millisecond})
	c := newClient(t)

	req, _ := http.NewRequest(http.MethodPost, r.URL+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hello there you"}],"n":1}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "rid-1")
	start := time.Now()
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))

	m := decodeJSON(t, resp)
	require.Equal(t, "chat.completion", m["object"])
	require.True(t, strings.HasPrefix(m["id"].(string), "chatcmpl-"))
	require.Equal(t, "m", m["model"])
	ch := m["choices"].([]any)[0].(map[string]any)
	require.Equal(t, "length", ch["finish_reason"])
	require.Equal(t, map[string]any{"role": "assistant", "content": "tok tok tok tok tok"}, ch["message"])
	u := m["usage"].(map[string]any)
	require.EqualValues(t, 3, u["prompt_tokens"])
	require.EqualValues(t, 5, u["completion_tokens"])
	require.EqualValues(t, 8, u["total_tokens"])
	require.NotContains(t, m, "cache_block_ids")

	got := r.Requests("/v1/chat/completions")
	require.Len(t, got, 1)
	require.Equal(t, http.MethodPost, got[0].Method)
	require.Equal(t, "rid-1", got[0].Header.Get("X-Request-Id"))
	require.JSONEq(t, `{"model":"m","messages":[{"role":"user","content":"hello there you"}],"n":1}`, string(got[0].Body))
	require.Nil(t, got[0].MigrationRequest)
	require.Zero(t, r.Active())
}

func TestReplicaCompletionsNonStream(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Tokens: 3})
	m := decodeJSON(t, mustPost(t, newClient(t), r.URL+"/v1/completions", `{"model":"sim-model","prompt":"a b"}`))
	require.Equal(t, "text_completion", m["object"])
	ch := m["choices"].([]any)[0].(map[string]any)
	require.Equal(t, "tok tok tok", ch["text"])
	require.Equal(t, "length", ch["finish_reason"])
	require.EqualValues(t, 3, m["usage"].(map[string]any)["completion_tokens"])
}

func TestReplicaChatStream(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Tokens: 4, TTFT: 30 * time.Millisecond, ITL: 5 * time.Millisecond})
	start := time.Now()
	resp := mustPost(t, newClient(t), r.URL+"/v1/chat/completions",
		`{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":true}`)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	events, err := readSSE(resp.Body)
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond+3*5*time.Millisecond)
	require.Len(t, events, 5)
	require.Equal(t, "[DONE]", events[4])

	cs := chunks(t, events)
	var text strings.Builder
	for i, c := range cs {
		require.Equal(t, "chat.completion.chunk", c["object"])
		ch := c["choices"].([]any)[0].(map[string]any)
		delta := ch["delta"].(map[string]any)
		text.WriteString(delta["content"].(string))
		if i == 0 {
			require.Equal(t, "assistant", delta["role"])
		}
		if i < 3 {
			require.NotContains(t, ch, "finish_reason")
			require.NotContains(t, c, "usage")
		}
	}
	require.Equal(t, "tok tok tok tok", text.String())
	last := cs[3]
	require.Equal(t, "length", last["choices"].([]any)[0].(map[string]any)["finish_reason"])
	require.EqualValues(t, 4, last["usage"].(map[string]any)["completion_tokens"])
}

func TestReplicaStreamIncludeUsage(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Tokens: 2})
	resp := mustPost(t, newClient(t), r.URL+"/v1/chat/completions",
		`{"model":"sim-model","messages":"hi","stream":true,"stream_options":{"include_usage":true}}`)
	events, err := readSSE(resp.Body)
	require.NoError(t, err)
	require.Len(t, events, 4)
	cs := chunks(t, events)
	require.Nil(t, cs[0]["usage"])
	require.Contains(t, cs[0], "usage")
	require.Empty(t, cs[2]["choices"])
	require.EqualValues(t, 2, cs[2]["usage"].(map[string]any)["completion_tokens"])
}

func TestReplicaCompletionsStream(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Tokens: 3})
	resp := mustPost(t, newClient(t), r.URL+"/v1/completions", `{"model":"sim-model","prompt":"x","stream":true}`)
	events, err := readSSE(resp.Body)
	require.NoError(t, err)
	require.Len(t, events, 4)
	var text strings.Builder
	for _, c := range chunks(t, events) {
		require.Equal(t, "text_completion", c["object"])
		text.WriteString(c["choices"].([]any)[0].(map[string]any)["text"].(string))
	}
	require.Equal(t, "tok tok tok", text.String())
}

func TestReplicaMaxTokensCap(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Tokens: 6})
	c := newClient(t)
	for _, tc := range []struct {
		extra string
		want  float64
	}{
		{``, 6},
		{`,"max_tokens":3`, 3},
		{`,"max_tokens":100`, 6},
		{`,"max_tokens":10,"max_completion_tokens":2`, 2},
	} {
		m := decodeJSON(t, mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi"`+tc.extra+`}`))
		require.Equal(t, tc.want, m["usage"].(map[string]any)["completion_tokens"], tc.extra)

		resp := mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true`+tc.extra+`}`)
		events, err := readSSE(resp.Body)
		require.NoError(t, err)
		require.Len(t, events, int(tc.want)+1, tc.extra)
	}
	resp := mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","max_tokens":0}`)
	require.Equal(t, 400, resp.StatusCode)
}

func TestReplicaBadRequests(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)

	resp := mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"nope","messages":"hi"}`)
	require.Equal(t, 404, resp.StatusCode)
	m := decodeJSON(t, resp)
	require.Equal(t, "error", m["object"])
	require.Equal(t, "not_found_error", m["type"])
	require.EqualValues(t, 404, m["code"])
	require.Contains(t, m["message"], "nope")

	resp = mustPost(t, c, r.URL+"/v1/chat/completions", `{"messages":"hi"}`)
	require.Equal(t, 400, resp.StatusCode)
	resp = mustPost(t, c, r.URL+"/v1/completions", `not json`)
	require.Equal(t, 400, resp.StatusCode)

	resp, err := c.Post(r.URL+"/v1/chat/completions", "text/plain", strings.NewReader(`{"model":"sim-model"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 400, resp.StatusCode)

	resp = mustGet(t, c, r.URL+"/nope")
	require.Equal(t, 404, resp.StatusCode)
	require.Equal(t, "Not Found", decodeJSON(t, resp)["detail"])
	resp = mustGet(t, c, r.URL+"/v1/chat/completions")
	require.Equal(t, 405, resp.StatusCode)
}

func TestReplicaEcho(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)
	resp := mustPost(t, c, r.URL+"/v1/embeddings", `{"model":"sim-model","input":"x"}`)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, map[string]any{"object": "echo", "path": "/v1/embeddings", "model": "sim-model"}, decodeJSON(t, resp))
	require.Equal(t, 404, mustPost(t, c, r.URL+"/v1/embeddings", `{"model":"other"}`).StatusCode)
	require.Len(t, r.Requests("/v1/embeddings"), 2)
}

func TestReplicaClientCancelMidStream(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Tokens: 1000, ITL: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := post(t, ctx, newClient(t), r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true}`)
	require.NoError(t, err)
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "data: "))
	require.EqualValues(t, 1, r.Active())

	cancel()
	require.Eventually(t, func() bool { return r.Cancelled() == 1 && r.Active() == 0 }, 5*time.Second, 5*time.Millisecond)
}

func TestReplicaClientCancelNonStream(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{TTFT: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		resp, err := post(t, ctx, newClient(t), r.URL+"/v1/completions", `{"model":"sim-model","prompt":"x"}`)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	got := <-r.NextRequest()
	require.Equal(t, "/v1/completions", got.Path)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	require.Eventually(t, func() bool { return r.Cancelled() == 1 && r.Active() == 0 }, 5*time.Second, 5*time.Millisecond)
}

func TestReplicaFaultStatus(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)

	r.SetFault(Fault{Status: 503, Body: `{"error":"busy"}`})
	resp := mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true}`)
	require.Equal(t, 503, resp.StatusCode)
	b, _ := io.ReadAll(resp.Body)
	require.JSONEq(t, `{"error":"busy"}`, string(b))

	r.SetFault(Fault{Status: 500})
	resp = mustPost(t, c, r.URL+"/v1/embeddings", `{"model":"sim-model"}`)
	require.Equal(t, 500, resp.StatusCode)
	require.Equal(t, "server_error", decodeJSON(t, resp)["type"])

	r.SetFault(Fault{})
	require.Equal(t, 200, mustPost(t, c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi"}`).StatusCode)
}

func TestReplicaFaultCutAfterStream(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{Tokens: 5})
	r.SetFault(Fault{CutAfter: 2})
	resp := mustPost(t, newClient(t), r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true}`)
	require.Equal(t, 200, resp.StatusCode)
	events, err := readSSE(resp.Body)
	require.Len(t, events, 2)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Zero(t, r.Cancelled())
}

func TestReplicaFaultCutNonStream(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)
	r.SetFault(Fault{CutAfter: 1})
	_, err := post(t, context.Background(), c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi"}`)
	require.Error(t, err)

	r.SetFault(Fault{CutAfter: -1})
	_, err = post(t, context.Background(), c, r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true}`)
	require.Error(t, err)
	require.Eventually(t, func() bool { return r.Active() == 0 }, 5*time.Second, 5*time.Millisecond)
}

func TestReplicaFaultHang(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	r.SetFault(Fault{Hang: true})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := post(t, ctx, newClient(t), r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi"}`)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Eventually(t, func() bool { return r.Cancelled() == 1 && r.Active() == 0 }, 5*time.Second, 5*time.Millisecond)
}

func TestReplicaCloseEndsInFlightRequests(t *testing.T) {
	r := NewReplica(ReplicaConfig{})
	require.NoError(t, r.Start())
	r.SetFault(Fault{Hang: true})
	errc := make(chan error, 1)
	go func() {
		resp, err := post(t, context.Background(), newClient(t), r.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi"}`)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-r.NextRequest()
	start := time.Now()
	require.NoError(t, r.Close())
	require.Less(t, time.Since(start), 2*time.Second)
	require.Error(t, <-errc)
	require.Zero(t, r.Cancelled(), "requests ended by Close are not client cancels")
	require.Zero(t, r.Active())
	require.NoError(t, r.Close(), "Close twice")
}

func TestReplicaTerminate(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{})
	c := newClient(t)

	r.SetTerminateStatus(400)
	resp := mustGet(t, c, r.URL+"/terminate")
	require.Equal(t, 400, resp.StatusCode)
	require.Contains(t, decodeJSON(t, resp)["message"], "can not be terminated")
	require.False(t, r.Terminated())

	r.SetTerminateStatus(200)
	resp = mustGet(t, c, r.URL+"/terminate")
	require.Equal(t, 200, resp.StatusCode)
	require.True(t, r.Terminated())
	// Still listening: tests own the lifetime.
	require.Equal(t, 200, mustGet(t, c, r.URL+"/health").StatusCode)
}

func TestReplicaOnTerminateOnlyWhenAnswered200(t *testing.T) {
	calls := make(chan struct{}, 2)
	r := StartReplica(t, ReplicaConfig{OnTerminate: func() { calls <- struct{}{} }})
	c := newClient(t)

	// The hook runs before the answer is sent, so once the answer is in, it ran or never will.
	r.SetTerminateStatus(400)
	require.Equal(t, 400, mustGet(t, c, r.URL+"/terminate").StatusCode)
	require.Empty(t, calls, "a refused terminate must not call OnTerminate")

	r.SetTerminateStatus(200)
	require.Equal(t, 200, mustGet(t, c, r.URL+"/terminate").StatusCode)
	require.Len(t, calls, 1)
}

func TestReplicaStartErrors(t *testing.T) {
	require.Error(t, NewReplica(ReplicaConfig{Role: "Leader"}).Start())
	r := StartReplica(t, ReplicaConfig{Role: "decode"})
	require.Error(t, r.Start(), "second Start")
	require.Error(t, NewReplica(ReplicaConfig{Port: portOf(t, r.URL)}).Start(), "port in use")
}

func portOf(t *testing.T, rawURL string) int {
	t.Helper()
	u, err := url.Parse(rawURL)
	require.NoError(t, err)
	p, err := strconv.Atoi(u.Port())
	require.NoError(t, err)
	return p
}

// fakeProxy records /nodes/add and /nodes/remove and, like a real proxy,
// probes the replica's /v1/models before it accepts a registration.
type fakeProxy struct {
	adds   chan nodeCall
	remove chan nodeCall
	// addStatus answers the n-th /nodes/add (0-based): a status, or -1 to
	// hang until the caller gives up; nil means 200.
	addStatus func(n int) int
	n         atomic.Int32
}

type nodeCall struct {
	body   map[string]any
	auth   string
	probed int
}

func startFakeProxy(t *testing.T, addStatus func(n int) int) (*fakeProxy, string) {
	t.Helper()
	p := &fakeProxy{adds: make(chan nodeCall, 16), remove: make(chan nodeCall, 16), addStatus: addStatus}
	probe := newClient(t)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /nodes/add", func(w http.ResponseWriter, req *http.Request) {
		call := nodeCall{auth: req.Header.Get("Authorization")}
		_ = json.NewDecoder(req.Body).Decode(&call.body)
		if resp, err := probe.Get(call.body["url"].(string) + "/v1/models"); err == nil {
			call.probed = resp.StatusCode
			resp.Body.Close()
		}
		p.adds <- call
		status := 200
		if n := int(p.n.Add(1)) - 1; p.addStatus != nil {
			status = p.addStatus(n)
		}
		if status == -1 {
			<-req.Context().Done()
			return
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `"Added successfully"`)
	})
	mux.HandleFunc("POST /nodes/remove", func(w http.ResponseWriter, req *http.Request) {
		call := nodeCall{auth: req.Header.Get("Authorization")}
		_ = json.NewDecoder(req.Body).Decode(&call.body)
		p.remove <- call
		_, _ = io.WriteString(w, `"Deleted successfully"`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return p, srv.URL
}

func TestReplicaRegisters(t *testing.T) {
	p, proxyURL := startFakeProxy(t, nil)
	r := NewReplica(ReplicaConfig{ProxyURL: proxyURL, AdminKey: "k", Role: "Prefill", Speed: 12, Models: []string{"m"}})
	require.NoError(t, r.Start())

	add := <-p.adds
	require.Equal(t, 200, add.probed, "the replica answers before it registers")
	require.Equal(t, "Bearer k", add.auth)
	require.Equal(t, r.URL, add.body["url"])
	require.Equal(t, map[string]any{"models": []any{"m"}, "role": 2.0, "speed": 12.0}, add.body["status"])
	require.Eventually(t, r.Registered, 5*time.Second, 5*time.Millisecond)

	require.NoError(t, r.Close())
	rm := <-p.remove
	require.Equal(t, map[string]any{"url": r.URL}, rm.body)
	require.Equal(t, "Bearer k", rm.auth)
	require.False(t, r.Registered())
}

func TestReplicaRegisterRetries(t *testing.T) {
	p, proxyURL := startFakeProxy(t, func(n int) int {
		if n == 0 {
			return http.StatusBadGateway
		}
		return http.StatusOK
	})
	r := StartReplica(t, ReplicaConfig{ProxyURL: proxyURL})
	<-p.adds
	require.False(t, r.Registered())
	<-p.adds
	require.Eventually(t, r.Registered, 5*time.Second, 5*time.Millisecond)
	require.EqualValues(t, 2, p.n.Load())
}

func TestReplicaDeadProxy(t *testing.T) {
	r := NewReplica(ReplicaConfig{ProxyURL: DeadAddr(t)})
	start := time.Now()
	require.NoError(t, r.Start())
	require.Less(t, time.Since(start), 200*time.Millisecond, "Start never waits for the proxy")
	require.False(t, r.Registered())
	// The replica serves meanwhile.
	require.Equal(t, 200, mustGet(t, newClient(t), r.URL+"/health").StatusCode)
	start = time.Now()
	require.NoError(t, r.Close())
	require.Less(t, time.Since(start), time.Second)
}

func TestReplicaCloseDuringHangingRegistration(t *testing.T) {
	p, proxyURL := startFakeProxy(t, func(int) int { return -1 })
	r := NewReplica(ReplicaConfig{ProxyURL: proxyURL})
	require.NoError(t, r.Start())
	<-p.adds
	start := time.Now()
	require.NoError(t, r.Close())
	require.Less(t, time.Since(start), 3*time.Second)
	// The add was cut short, so the proxy may hold us: Close removes anyway.
	require.Equal(t, r.URL, (<-p.remove).body["url"])
}

func TestDeadAddrRefuses(t *testing.T) {
	_, err := newClient(t).Get(DeadAddr(t) + "/health")
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
}

func TestReplicaSetTimingAndMaxRecorded(t *testing.T) {
	r := StartReplica(t, ReplicaConfig{MaxRecorded: 3})
	c := newClient(t)
	r.SetTiming(0, 0, 2)
	for i := range 7 {
		m := decodeJSON(t, mustPost(t, c, r.URL+"/v1/completions", `{"model":"sim-model","prompt":"`+strconv.Itoa(i)+`"}`))
		require.EqualValues(t, 2, m["usage"].(map[string]any)["completion_tokens"])
	}
	got := r.Received()
	require.Len(t, got, 3)
	require.JSONEq(t, `{"model":"sim-model","prompt":"6"}`, string(got[2].Body))
	require.Len(t, r.Requests("/v1/completions"), 3)
}
