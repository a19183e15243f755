package http_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/actors/routing"
	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

// dsTokens is how many tokens the simulated Decode replicas answer.
const dsTokens = 3

// startDistServe starts a DistServe proxy with one Prefill and one Decode replica registered.
func startDistServe(t *testing.T, ds lmhttp.DistServeConfig) (p *proxytest.Proxy, pre, dec *proxytest.Replica) {
	t.Helper()
	p = proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{DistServe: &ds}})
	pre = proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Prefill"})
	dec = proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Decode", Tokens: dsTokens})
	p.MustAdd(t, pre, dec)
	return p, pre, dec
}

// jsonMap decodes a recorded body.
func jsonMap(t testing.TB, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m), "%s", b)
	return m
}

// onlyRequest returns the one request rep received on path.
func onlyRequest(t testing.TB, rep *proxytest.Replica, path string) proxytest.Received {
	t.Helper()
	got := rep.Requests(path)
	require.Len(t, got, 1, "requests to %s%s", rep.URL, path)
	return got[0]
}

// asked lists the paths rep was asked for, leaving out the /v1/models probe of /nodes/add.
func asked(rep *proxytest.Replica) []string {
	var paths []string
	for _, r := range rep.Received() {
		if r.Path != "/v1/models" {
			paths = append(paths, r.Path)
		}
	}
	return paths
}

// distServeCounts is how many engine_info, p2p_initialize and p2p_connect calls rep received.
func distServeCounts(rep *proxytest.Replica) [3]int {
	return [3]int{len(rep.Requests("/distserve/engine_info")), len(rep.Requests("/distserve/p2p_initialize")),
		len(rep.Requests("/distserve/p2p_connect"))}
}

// A chat or completion goes to the Prefill replica as a one-token, non-stream request that keeps its
// KV cache, then to the Decode replica unchanged but for migration_request, which names the prefill
// session, its blocks and its last token; the Decode replica's answer reaches the client.
func TestDistServeChatAndCompletions(t *testing.T) {
	bodies := map[string]string{
		"/v1/chat/completions": `{"model":"sim-model","messages":[{"role":"user","content":"hello there"}],"temperature":0.5,"max_tokens":50,"user":"u1"`,
		"/v1/completions":      `{"model":"sim-model","prompt":"hello there","temperature":0.5,"max_tokens":50,"user":"u1"`,
	}
	for path, prefix := range bodies {
		for _, stream := range []bool{false, true} {
			name := strings.TrimPrefix(path, "/v1/")
			if stream {
				name += " stream"
			}
			t.Run(name, func(t *testing.T) {
				p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
				body := prefix + `,"stream":` + map[bool]string{false: "false", true: "true"}[stream] + `}`

				var content string
				if stream {
					events := streamEvents(t, p.URL+path, body)
					require.Len(t, events, dsTokens+1)
					require.Equal(t, "[DONE]", events[dsTokens])
					for _, e := range events[:dsTokens] {
						c := jsonMap(t, []byte(e))["choices"].([]any)[0].(map[string]any)
						if d, ok := c["delta"].(map[string]any); ok {
							content += d["content"].(string)
						} else {
							content += c["text"].(string)
						}
					}
				} else {
					code, _, b := postJSON(t, p.URL+path, []byte(body))
					require.Equal(t, http.StatusOK, code, "%s", b)
					c := jsonMap(t, b)["choices"].([]any)[0].(map[string]any)
					if m, ok := c["message"].(map[string]any); ok {
						content = m["content"].(string)
					} else {
						content = c["text"].(string)
					}
				}
				require.Equal(t, "tok tok tok", content, "the Decode replica's answer reaches the client")

				client := jsonMap(t, []byte(body))
				want := jsonMap(t, []byte(body))
				want["max_tokens"], want["stream"], want["with_cache"], want["preserve_cache"] = 1.0, false, true, true
				if path == "/v1/chat/completions" {
					want["max_completion_tokens"] = 1.0
				}
				require.Equal(t, want, jsonMap(t, onlyRequest(t, pre, path).Body), "the prefill request")

				sessions := pre.CachedSessions()
				require.Len(t, sessions, 1, "the prefill replica keeps the prompt's cache")
				s := float64(sessions[0])
				got := jsonMap(t, onlyRequest(t, dec, path).Body)
				mr := got["migration_request"]
				delete(got, "migration_request")
				require.Equal(t, client, got, "the decode request is the client's body")
				// The simulated replica numbers a session's blocks session*1000+i and its last token 1000+session.
				require.Equal(t, map[string]any{"protocol": 2.0, "remote_engine_id": pre.URL, "remote_session_id": s,
					"remote_block_ids": []any{s * 1000}, "remote_token_id": 1000 + s, "is_dummy_prefill": false}, mr)
				p.WaitIdle(t, 2*time.Second)
			})
		}
	}
}

// The prefill request carries the client's headers as any forwarded request does (less hop-by-hop
// ones, with X-Forwarded-* and the request ID), is sent as JSON, and asks for no compression: the
// proxy reads that answer itself. The decode request is forwarded with the client's headers as they are.
func TestDistServePrefillHeaders(t *testing.T) {
	p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
	code, _, b := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "messages": []any{}},
		"X-Request-Id", "ds-id-1", "X-Custom", "yes", "Accept-Encoding", "gzip", "Connection", "X-Hop", "X-Hop", "no")
	require.Equal(t, http.StatusOK, code, "%s", b)
	for _, c := range []struct {
		rep      *proxytest.Replica
		encoding string
	}{{pre, ""}, {dec, "gzip"}} {
		h := onlyRequest(t, c.rep, "/v1/chat/completions").Header
		require.Equal(t, "ds-id-1", h.Get("X-Request-Id"), c.rep.URL)
		require.Equal(t, "127.0.0.1", h.Get("X-Forwarded-For"), c.rep.URL)
		require.Equal(t, "http", h.Get("X-Forwarded-Proto"), c.rep.URL)
		require.Equal(t, "yes", h.Get("X-Custom"), c.rep.URL)
		require.Equal(t, "application/json", h.Get("Content-Type"), c.rep.URL)
		require.Equal(t, c.encoding, h.Get("Accept-Encoding"), c.rep.URL)
		require.Empty(t, h.Get("X-Hop"), c.rep.URL)
	}
	p.WaitIdle(t, 2*time.Second)
}

// --migration-protocol travels as LMDeploy's enum number, in the migration request and in the link's
// p2p_initialize and p2p_connect; only RDMA sends an RDMA config, with --link-type's number.
func TestDistServeMigrationProtocols(t *testing.T) {
	cases := []struct {
		protocol, linkType string
		number             float64
		rdma               any
	}{
		{"TCP", "", 1, nil},
		{"RDMA", "", 2, map[string]any{"with_gdr": true, "link_type": 2.0}},
		{"RDMA", "IB", 2, map[string]any{"with_gdr": true, "link_type": 1.0}},
		{"NVLINK", "", 3, nil},
	}
	for _, c := range cases {
		t.Run(c.protocol+" "+c.linkType, func(t *testing.T) {
			p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{MigrationProtocol: c.protocol, LinkType: c.linkType})
			code, _, b := postJSON(t, p.URL+"/v1/completions", map[string]any{"model": "sim-model", "prompt": "hi"})
			require.Equal(t, http.StatusOK, code, "%s", b)
			mr := jsonMap(t, onlyRequest(t, dec, "/v1/completions").MigrationRequest)
			require.Equal(t, c.number, mr["protocol"])
			for _, rep := range []*proxytest.Replica{pre, dec} {
				init := jsonMap(t, onlyRequest(t, rep, "/distserve/p2p_initialize").Body)
				require.Equal(t, c.number, init["protocol"])
				require.Equal(t, c.rdma, init["rdma_config"])
				require.Equal(t, c.number, jsonMap(t, onlyRequest(t, rep, "/distserve/p2p_connect").Body)["protocol"])
			}
			p.WaitIdle(t, 2*time.Second)
		})
	}
}

// --disable-gdr asks the replicas for an RDMA link without GPU Direct RDMA: with_gdr is false in
// both p2p_initialize calls.
func TestDistServeDisableGDR(t *testing.T) {
	p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{DisableGDR: true})
	code, _, b := postJSON(t, p.URL+"/v1/completions", map[string]any{"model": "sim-model", "prompt": "hi"})
	require.Equal(t, http.StatusOK, code, "%s", b)
	for _, rep := range []*proxytest.Replica{pre, dec} {
		init := jsonMap(t, onlyRequest(t, rep, "/distserve/p2p_initialize").Body)
		require.Equal(t, map[string]any{"with_gdr": false, "link_type": 2.0}, init["rdma_config"])
	}
	p.WaitIdle(t, 2*time.Second)
}

// Twenty first requests on a new pair at once connect it once: one engine_info, p2p_initialize and
// p2p_connect on each replica, with LMDeploy's request shapes.
func TestDistServeConnectsEachPairOnce(t *testing.T) {
	p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
	pre.SetTiming(50*time.Millisecond, 0, 0) // the prefills overlap, so the requests reach the link together
	dec.SetEngineInfoAsString(false)         // one side answers the object itself, the other a JSON string
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			code, _, b := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "messages": "hi"})
			assert.Equal(t, http.StatusOK, code, "%s", b)
		})
	}
	wg.Wait()
	require.Equal(t, [3]int{1, 1, 1}, distServeCounts(pre))
	require.Equal(t, [3]int{1, 1, 1}, distServeCounts(dec))
	require.Len(t, dec.Requests("/v1/chat/completions"), 20)

	engineConfig := map[string]any{"tp_size": 1.0, "ep_size": 1.0, "dp_size": 1.0, "pp_size": nil, "dp_rank": 0.0,
		"block_size": 64.0, "num_cpu_blocks": 0.0, "num_gpu_blocks": 1024.0}
	for _, side := range []struct{ local, remote *proxytest.Replica }{{pre, dec}, {dec, pre}} {
		init := jsonMap(t, onlyRequest(t, side.local, "/distserve/p2p_initialize").Body)
		require.Equal(t, map[string]any{"local_engine_id": side.local.URL, "local_engine_config": engineConfig,
			"remote_engine_id": side.remote.URL, "remote_engine_config": engineConfig, "protocol": 2.0, "rank": nil,
			"tcp_config": nil, "rdma_config": map[string]any{"with_gdr": true, "link_type": 2.0}, "nvlink_config": nil}, init)
		conn := jsonMap(t, onlyRequest(t, side.local, "/distserve/p2p_connect").Body)
		require.Equal(t, side.remote.URL, conn["remote_engine_id"])
		require.Contains(t, conn["remote_engine_endpoint_info"], "zmq_address")
		require.Len(t, conn["remote_kvtransfer_endpoint_info"], 1)
		require.True(t, side.local.Connected(side.remote.URL))
	}
	p.WaitIdle(t, 2*time.Second)
}

// A connect that fails fails its request with 502 and frees the prefill's cache; the next request
// connects again, from the start, and succeeds.
func TestDistServeFailedConnectIsRetried(t *testing.T) {
	p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
	dec.SetDistServeFault("p2p_connect", http.StatusInternalServerError)
	code, _, b := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "messages": "hi"})
	require.Equal(t, http.StatusBadGateway, code)
	requireOpenAIError(t, b, http.StatusBadGateway)
	msg := decode(t, b)["message"].(string)
	require.Contains(t, msg, "/distserve/p2p_connect answered HTTP 500: simulated distserve failure")
	require.Empty(t, dec.Requests("/v1/chat/completions"), "no decode without a link")
	require.Eventually(t, func() bool { return len(pre.CachedSessions()) == 0 }, 2*time.Second, time.Millisecond,
		"the cache of the prefill that cannot migrate is freed")
	free := jsonMap(t, onlyRequest(t, pre, "/distserve/free_cache").Body)
	require.Equal(t, pre.URL, free["remote_engine_id"])
	p.WaitIdle(t, 2*time.Second)

	dec.SetDistServeFault("p2p_connect", 0)
	for range 2 {
		code, _, b = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "messages": "hi"})
		require.Equal(t, http.StatusOK, code, "%s", b)
	}
	require.Equal(t, [3]int{2, 2, 2}, distServeCounts(pre), "one retried sequence, then none")
	require.Equal(t, [3]int{2, 2, 2}, distServeCounts(dec))
	p.WaitIdle(t, 2*time.Second)
}

// --dummy-prefill skips the prefill phase and the link: no Prefill replica is needed, and the Decode
// replica gets LMDeploy's dummy migration request.
func TestDistServeDummyPrefill(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{DistServe: &lmhttp.DistServeConfig{DummyPrefill: true}}})
	dec := proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Decode", Tokens: dsTokens})
	p.MustAdd(t, dec)
	events := streamEvents(t, p.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true}`)
	require.Len(t, events, dsTokens+1)
	mr := jsonMap(t, onlyRequest(t, dec, "/v1/chat/completions").MigrationRequest)
	require.Equal(t, map[string]any{"protocol": 2.0, "remote_engine_id": "dummy:dummy", "remote_session_id": 0.0,
		"remote_block_ids": []any{}, "remote_token_id": 0.0, "is_dummy_prefill": true}, mr)
	require.Equal(t, [3]int{0, 0, 0}, distServeCounts(dec), "no link to connect")
	p.WaitIdle(t, 2*time.Second)
}

// The requests DistServe refuses before any replica works: n > 1 (400), an unknown model (404), and a
// model without a routable replica of one of the two roles (503 naming it).
func TestDistServeRefusals(t *testing.T) {
	cases := []struct {
		name  string
		roles []string
		body  map[string]any
		code  int
		says  string
	}{
		{"n above 1", []string{"Prefill", "Decode"}, map[string]any{"model": "sim-model", "n": 2}, 400, "n > 1"},
		{"unknown model", []string{"Prefill", "Decode"}, map[string]any{"model": "nope"}, 404, "nope"},
		{"no Prefill replica", []string{"Decode"}, map[string]any{"model": "sim-model"}, 503, "Prefill"},
		{"no Decode replica", []string{"Prefill"}, map[string]any{"model": "sim-model"}, 503, "Decode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{DistServe: &lmhttp.DistServeConfig{}}})
			var reps []*proxytest.Replica
			for _, role := range c.roles {
				reps = append(reps, proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: role}))
			}
			p.MustAdd(t, reps...)
			code, _, b := postJSON(t, p.URL+"/v1/chat/completions", c.body)
			require.Equal(t, c.code, code, "%s", b)
			requireOpenAIError(t, b, c.code)
			require.Contains(t, decode(t, b)["message"], c.says)
			for _, rep := range reps {
				require.Empty(t, rep.Requests("/v1/chat/completions"))
			}
			p.WaitIdle(t, 2*time.Second)
		})
	}
}

// A prefill that fails fails the request with 502 and the replica's status and message; the Decode
// replica is never asked.
func TestDistServePrefillFailure(t *testing.T) {
	p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
	pre.SetFault(proxytest.Fault{Status: http.StatusInternalServerError})
	code, _, b := postJSON(t, p.URL+"/v1/completions", map[string]any{"model": "sim-model", "prompt": "hi", "stream": true})
	require.Equal(t, http.StatusBadGateway, code)
	requireOpenAIError(t, b, http.StatusBadGateway)
	require.Contains(t, decode(t, b)["message"], "the Prefill replica "+pre.URL+" answered HTTP 500: simulated failure")
	require.Empty(t, asked(dec), "the Decode replica is never asked")
	p.WaitIdle(t, 2*time.Second)
}

// Warmup connects every routable Prefill×Decode pair and reports the pairs that fail with 502.
func TestDistServeWarmup(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{DistServe: &lmhttp.DistServeConfig{}}})
	var prefills, decodes []*proxytest.Replica
	for range 2 {
		prefills = append(prefills, proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Prefill"}))
		decodes = append(decodes, proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Decode"}))
	}
	p.MustAdd(t, append(prefills, decodes...)...)
	code, b := p.Post(t, "/distserve/connection_warmup", map[string]any{})
	require.Equal(t, http.StatusOK, code, "%s", b)
	require.JSONEq(t, `{"SUCCESS": true}`, string(b))
	for _, pr := range prefills {
		for _, d := range decodes {
			require.True(t, pr.Connected(d.URL), "%s knows %s", pr.URL, d.URL)
			require.True(t, d.Connected(pr.URL), "%s knows %s", d.URL, pr.URL)
		}
	}

	bad := proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Decode"})
	bad.SetDistServeFault("p2p_initialize", http.StatusInternalServerError)
	p.MustAdd(t, bad)
	code, b = p.Post(t, "/distserve/connection_warmup", map[string]any{})
	require.Equal(t, http.StatusBadGateway, code, "%s", b)
	detail := decode(t, b)["detail"].(string)
	require.Contains(t, detail, "2 of 6 DistServe links failed to connect")
	for _, pr := range prefills {
		require.Contains(t, detail, pr.URL+" → "+bad.URL)
	}
	for _, d := range decodes {
		require.Len(t, d.Requests("/distserve/p2p_connect"), 2, "connected pairs are not connected again")
	}
}

// Bug: under Hybrid, warmup and gc answered 404 "DistServe is off", failing the scripts that call
// warmup whatever the serving strategy (LMDeploy's proxy answers success). Both answer 200 and ask no
// replica anything, even Prefill and Decode ones.
func TestDistServeRoutesUnderHybridSucceedAndDoNothing(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	pre := proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Prefill"})
	dec := proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Decode"})
	p.MustAdd(t, pre, dec)
	code, _, b := do(t, http.MethodPost, p.URL+"/distserve/connection_warmup", "", nil)
	require.Equal(t, http.StatusOK, code, "%s", b)
	require.JSONEq(t, `{"SUCCESS": true}`, string(b))
	code, _, b = do(t, http.MethodPost, p.URL+"/distserve/gc", "", nil)
	require.Equal(t, http.StatusOK, code, "%s", b)
	require.JSONEq(t, `{"freed": 0, "failed": []}`, string(b))
	require.Empty(t, asked(pre))
	require.Empty(t, asked(dec))
}

// openStream starts a stream request and returns once its first event arrived; cancel leaves.
func openStream(t *testing.T, url, body string) (cancel func(), done <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "data: {"), line)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		<-ctx.Done()
		resp.Body.Close()
	}()
	t.Cleanup(func() { cancel(); <-ended })
	return cancel, ended
}

// When a Decode replica leaves while a migration to it is still answering, gc frees the session's
// cache on the Prefill replica, once; the link is dropped on both sides.
func TestDistServeGCFreesSessionsOfARemovedDecodeReplica(t *testing.T) {
	p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
	dec.SetTiming(0, time.Hour, 4) // the answer stops after its first token
	cancel, ended := openStream(t, p.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true}`)
	sessions := pre.CachedSessions()
	require.Len(t, sessions, 1)

	code, b := p.Post(t, "/nodes/remove", map[string]string{"url": dec.URL})
	require.Equal(t, http.StatusOK, code, "%s", b)
	code, b = p.Post(t, "/distserve/gc", map[string]any{})
	require.Equal(t, http.StatusOK, code, "%s", b)
	require.JSONEq(t, `{"freed": 1, "failed": []}`, string(b))
	require.Empty(t, pre.CachedSessions())
	free := jsonMap(t, onlyRequest(t, pre, "/distserve/free_cache").Body)
	require.Equal(t, map[string]any{"remote_engine_id": pre.URL, "remote_session_id": float64(sessions[0])}, free)
	require.Eventually(t, func() bool { return !pre.Connected(dec.URL) && !dec.Connected(pre.URL) },
		2*time.Second, time.Millisecond, "p2p_drop_connect on both replicas")

	code, b = p.Post(t, "/distserve/gc", map[string]any{})
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"freed": 0, "failed": []}`, string(b), "a session is freed once")
	cancel()
	<-ended
	require.Eventually(t, func() bool { return dec.Cancelled() == 1 }, 2*time.Second, time.Millisecond)
	p.WaitIdle(t, 2*time.Second)
}

// A client that leaves during the prefill cancels the prefill request, and the Decode replica is never
// asked; one that leaves during the decode cancels the decode request only. Either way every in-flight
// count returns to 0.
func TestDistServeClientLeaves(t *testing.T) {
	t.Run("during prefill", func(t *testing.T) {
		p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
		pre.SetTiming(time.Hour, 0, 0)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL+"/v1/chat/completions",
			strings.NewReader(`{"model":"sim-model","messages":"hi","stream":true}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		errs := make(chan error, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			errs <- err
		}()
		select {
		case <-pre.NextRequest():
		case <-time.After(5 * time.Second):
			t.Fatal("the Prefill replica never got the request")
		}
		cancel()
		require.Error(t, <-errs)
		require.Eventually(t, func() bool { return pre.Cancelled() == 1 }, 2*time.Second, time.Millisecond)
		p.WaitIdle(t, 2*time.Second)
		require.Empty(t, asked(dec), "the Decode replica is never asked")
		require.Zero(t, dec.Cancelled())
	})
	t.Run("during decode", func(t *testing.T) {
		p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
		dec.SetTiming(0, time.Hour, 4)
		cancel, ended := openStream(t, p.URL+"/v1/chat/completions", `{"model":"sim-model","messages":"hi","stream":true}`)
		cancel()
		<-ended
		require.Eventually(t, func() bool { return dec.Cancelled() == 1 }, 2*time.Second, time.Millisecond)
		p.WaitIdle(t, 2*time.Second)
		require.Zero(t, pre.Cancelled(), "the prefill had ended")
	})
}

// A Decode replica that went away fails the request with 502, and the prefill's cache, which nobody
// will pull, is freed at once.
func TestDistServeDecodeReplicaGone(t *testing.T) {
	p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
	body := map[string]any{"model": "sim-model", "prompt": "hi"}
	code, _, b := postJSON(t, p.URL+"/v1/completions", body)
	require.Equal(t, http.StatusOK, code, "%s", b)
	kept := pre.CachedSessions() // the Decode replica freed it over its own link; the simulation keeps it
	require.Len(t, kept, 1)
	require.NoError(t, dec.Close())
	code, _, b = postJSON(t, p.URL+"/v1/completions", body)
	require.Equal(t, http.StatusBadGateway, code, "%s", b)
	// A fresh connection is refused; a pooled one that the replica closed ends in EOF (a POST is not
	// retried on another connection).
	require.Regexp(t, `cannot reach the Decode replica|the replica failed: EOF`, decode(t, b)["message"])
	require.Eventually(t, func() bool { return slices.Equal(kept, pre.CachedSessions()) }, 2*time.Second, time.Millisecond,
		"the new session's cache is freed")
	free := jsonMap(t, onlyRequest(t, pre, "/distserve/free_cache").Body)
	require.NotEqual(t, float64(kept[0]), free["remote_session_id"])
	p.WaitIdle(t, 2*time.Second)
}

// favour is a routing strategy that picks a favoured candidate when there is one: a test decides which
// replica a request tries first instead of leaving it to chance.
type favour []string

func (f favour) Name() string { return "favour" }

func (f favour) Select(cands []routing.Candidate) int {
	for i, c := range cands {
		if slices.Contains(f, c.URL) {
			return i
		}
	}
	return 0
}

// startDeadFirst starts a DistServe proxy with one Prefill and two Decode replicas (role "Decode"), or
// two Prefill and one Decode (role "Prefill"). Of the two of role, dead is the one every request tries
// first: registered and healthy, until the caller closes it. Probes are an hour apart, so only the
// request path can find it dead.
func startDeadFirst(t *testing.T, role string) (p *proxytest.Proxy, pre, dec, dead *proxytest.Replica) {
	t.Helper()
	pre = proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Prefill"})
	dec = proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Decode", Tokens: dsTokens})
	dead = proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: role, Tokens: dsTokens})
	p = proxytest.StartProxy(t, proxytest.ProxyConfig{
		HTTP:   lmhttp.Config{DistServe: &lmhttp.DistServeConfig{}},
		Actors: actors.Config{Strategy: favour{dead.URL}, HealthInterval: time.Hour},
	})
	p.MustAdd(t, dead, pre, dec)
	return p, pre, dec, dead
}

// requireServedBy checks that a chat request's prefill ran on pre and its decode on dec, and that the
// dead replica's refused connection was counted once, as under Hybrid, while the request itself counts
// as a success of dec.
func requireServedBy(t *testing.T, p *proxytest.Proxy, pre, dec, dead *proxytest.Replica) {
	t.Helper()
	require.Len(t, pre.Requests("/v1/chat/completions"), 1)
	mr := jsonMap(t, onlyRequest(t, dec, "/v1/chat/completions").MigrationRequest)
	require.Equal(t, pre.URL, mr["remote_engine_id"], "the decode pulls from the Prefill replica that ran the prefill")
	require.Empty(t, dead.Requests("/v1/chat/completions"))
	p.WaitIdle(t, 2*time.Second)
	// The request is counted when its handler returns, just after its answer left.
	require.Eventually(t, func() bool {
		return sum(scrape(t, p.URL), "lmproxy_requests_total{", `replica="`+dec.URL+`"`, `status="200"`) == 1
	}, 2*time.Second, time.Millisecond, "the request counts as a success of the Decode replica")
	require.EqualValues(t, 1, sum(scrape(t, p.URL), "lmproxy_upstream_errors_total{", `replica="`+dead.URL+`"`, `kind="dial_error"`))
}

// chatOK sends one chat request and checks that the Decode replica's answer reached the client.
func chatOK(t *testing.T, p *proxytest.Proxy) {
	t.Helper()
	code, _, b := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "messages": "hi"})
	require.Equal(t, http.StatusOK, code, "%s", b)
	c := jsonMap(t, b)["choices"].([]any)[0].(map[string]any)
	require.Equal(t, "tok tok tok", c["message"].(map[string]any)["content"])
}

// Bug: under DistServe a Prefill replica that refused the connection failed the request with 502
// "cannot reach the Prefill replica", though another Prefill replica could serve it (SPEC §7: a
// refused connection is retried once on another replica). The prefill now moves to the other one.
func TestDistServeUnreachablePrefillReplicaIsRetriedOnAnother(t *testing.T) {
	p, pre, dec, dead := startDeadFirst(t, "Prefill")
	require.NoError(t, dead.Close())
	chatOK(t, p)
	requireServedBy(t, p, pre, dec, dead)
}

// Bug: under DistServe a Decode replica that refused the connection failed the request with 502
// "cannot reach the Decode replica", though another Decode replica could serve it. Whether the dead
// replica shows when its request is sent (its link was connected by warmup before it died) or when
// its link connects (engine_info refused), the decode now moves to the other Decode replica, which
// pulls the same prefill session: the prefill is not run again and its cache is not freed.
func TestDistServeUnreachableDecodeReplicaIsRetriedOnAnother(t *testing.T) {
	for _, warm := range []bool{true, false} {
		name := map[bool]string{true: "link connected by warmup", false: "link connects on the request"}[warm]
		t.Run(name, func(t *testing.T) {
			p, pre, dec, dead := startDeadFirst(t, "Decode")
			if warm {
				code, b := p.Post(t, "/distserve/connection_warmup", map[string]any{})
				require.Equal(t, http.StatusOK, code, "%s", b)
			}
			require.NoError(t, dead.Close())
			chatOK(t, p)
			requireServedBy(t, p, pre, dec, dead)
			sessions := pre.CachedSessions()
			require.Len(t, sessions, 1)
			mr := jsonMap(t, onlyRequest(t, dec, "/v1/chat/completions").MigrationRequest)
			require.Equal(t, float64(sessions[0]), mr["remote_session_id"])
			require.Empty(t, pre.Requests("/distserve/free_cache"), "the cache was left to the other Decode replica")
		})
	}
}

// With no other replica of its role, a replica that refuses the connection fails the request with
// 502 naming it, as under Hybrid, and every lease taken is given back.
func TestDistServeUnreachableReplicaWithoutAnotherIs502(t *testing.T) {
	for _, role := range []string{"Prefill", "Decode"} {
		t.Run(role, func(t *testing.T) {
			p, pre, dec := startDistServe(t, lmhttp.DistServeConfig{})
			dead := map[string]*proxytest.Replica{"Prefill": pre, "Decode": dec}[role]
			require.NoError(t, dead.Close())
			code, _, b := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "messages": "hi"})
			require.Equal(t, http.StatusBadGateway, code, "%s", b)
			requireOpenAIError(t, b, http.StatusBadGateway)
			require.Contains(t, decode(t, b)["message"], "cannot reach the "+role+" replica "+dead.URL)
			p.WaitIdle(t, 2*time.Second)
		})
	}
}

// LMDeploy links only engines of the same tensor parallelism (proxy_conn.py asserts it): a pair
// whose engine_info differ in tp_size is not connected, and its request fails with 502 naming both.
func TestDistServeLinksOnlyTheSameTensorParallelism(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{DistServe: &lmhttp.DistServeConfig{}}})
	pre := proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Prefill"})
	dec := proxytest.StartReplica(t, proxytest.ReplicaConfig{Role: "Decode", TPSize: 2})
	p.MustAdd(t, pre, dec)
	code, _, b := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "messages": "hi"})
	require.Equal(t, http.StatusBadGateway, code, string(b))
	require.Contains(t, decode(t, b)["message"], "tp_size 1")
	require.Contains(t, decode(t, b)["message"], "tp_size 2")
	require.Empty(t, pre.Requests("/distserve/p2p_initialize"), "nothing is initialized for a pair that cannot link")
	code, _, b = postJSON(t, p.URL+"/distserve/connection_warmup", nil)
	require.Equal(t, http.StatusBadGateway, code, string(b))
	p.WaitIdle(t, 2*time.Second)
}
