package http_test

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/proxytest"
)

// scrape returns every sample of /metrics as "name{labels}" → value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	code, _, body := do(t, http.MethodGet, url+"/metrics", "", nil)
	require.Equal(t, http.StatusOK, code)
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, line)
		out[line[:i]] = v
	}
	return out
}

// sum adds the samples whose key starts with prefix and contains every part.
func sum(samples map[string]float64, prefix string, parts ...string) float64 {
	total := 0.0
next:
	for k, v := range samples {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(k, p) {
				continue next
			}
		}
		total += v
	}
	return total
}

func TestMetricsAfterTraffic(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{Tokens: 4})
	for i := 0; i < 5; i++ {
		code, _, _ := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
		require.Equal(t, http.StatusOK, code)
	}
	for i := 0; i < 3; i++ {
		require.Len(t, streamEvents(t, p.URL+"/v1/completions", `{"model":"sim-model","stream":true}`), 5)
	}
	code, _, _ := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "unknown-model-xyz"})
	require.Equal(t, http.StatusNotFound, code)

	// One client that leaves, one replica that fails.
	reps[0].SetTiming(time.Hour, 0, 4)
	reps[1].SetTiming(time.Hour, 0, 4)
	for _, r := range reps { // forget the requests above: the cancel must follow this one's arrival
		for len(r.NextRequest()) > 0 {
			<-r.NextRequest()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.URL+"/v1/chat/completions", strings.NewReader(`{"model":"sim-model"}`))
	req.Header.Set("Content-Type", "application/json")
	go func() {
		select {
		case <-reps[0].NextRequest():
		case <-reps[1].NextRequest():
		}
		cancel()
	}()
	_, err := http.DefaultClient.Do(req)
	require.Error(t, err)
	p.WaitIdle(t, 2*time.Second)
	for _, r := range reps {
		r.SetTiming(0, 0, 4)
		r.SetFault(proxytest.Fault{Status: 500})
	}
	code, _, _ = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
	require.Equal(t, http.StatusInternalServerError, code)

	// The request whose client left is counted when its handler returns, just after its release.
	require.Eventually(t, func() bool {
		return sum(scrape(t, p.URL), "lmproxy_requests_total{", `status="499"`) == 1
	}, 2*time.Second, time.Millisecond)
	m := scrape(t, p.URL)
	require.EqualValues(t, 5, sum(m, "lmproxy_requests_total{", `route="/v1/chat/completions"`, `status="200"`))
	require.EqualValues(t, 3, sum(m, "lmproxy_requests_total{", `route="/v1/completions"`, `status="200"`))
	require.EqualValues(t, 1, sum(m, "lmproxy_requests_total{", `status="404"`, `model=""`), "an unknown model is not a label")
	require.NotContains(t, strings.Join(keys(m), "\n"), "unknown-model-xyz")
	require.EqualValues(t, 10, sum(m, "lmproxy_request_duration_seconds_count{", `model="sim-model"`))
	require.EqualValues(t, 9, sum(m, "lmproxy_time_to_first_token_seconds_count{", `model="sim-model"`), "every answer with a body, the 500 included")
	require.EqualValues(t, 15, sum(m, "lmproxy_sse_events_total{"), "4 tokens and [DONE] per stream")
	require.EqualValues(t, 1, sum(m, "lmproxy_client_disconnects_total{", `route="/v1/chat/completions"`))
	require.EqualValues(t, 1, sum(m, "lmproxy_upstream_errors_total{", `kind="upstream_error"`))
	require.EqualValues(t, 11, sum(m, "lmproxy_routing_decision_seconds_count"), "every request that asked the registry, the unknown model included")
	require.EqualValues(t, 0, sum(m, "lmproxy_replica_in_flight{"))
	require.EqualValues(t, 2, sum(m, "lmproxy_replica_health{", `health="healthy"`))
	require.EqualValues(t, 2, sum(m, "lmproxy_replica_circuit{"))
	require.EqualValues(t, 2, sum(m, "lmproxy_replica_routable{"))
	require.Contains(t, m, `lmproxy_actor_events_total{event="dead_letter"}`)
	require.Contains(t, m, `lmproxy_actor_events_total{event="restart"}`)
}

func keys(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// leavingClient is a response writer whose client leaves the moment an answer is flushed to it.
type leavingClient struct {
	header http.Header
	status int
	body   strings.Builder
	leave  context.CancelFunc
}

func (c *leavingClient) Header() http.Header         { return c.header }
func (c *leavingClient) WriteHeader(status int)      { c.status = status }
func (c *leavingClient) Write(p []byte) (int, error) { return c.body.Write(p) }
func (c *leavingClient) FlushError() error           { c.leave(); return nil }

// A client that leaves as soon as it has the whole answer did not leave early: no disconnect is
// counted. (The proxy flushes a whole answer before its bookkeeping, so the client's hang-up can
// come first; it was counted as one, and logged as client_gone.)
func TestLeavingAfterTheWholeAnswerIsNoDisconnect(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{Tokens: 2})
	ctx, leave := context.WithCancel(context.Background())
	defer leave()
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/chat/completions", strings.NewReader(`{"model":"sim-model"}`))
	req.Header.Set("Content-Type", "application/json")
	w := &leavingClient{header: http.Header{}, leave: leave}
	p.Proxy.Server.Handler().ServeHTTP(w, req)
	require.Equal(t, http.StatusOK, w.status, w.body.String())
	require.Error(t, ctx.Err(), "the answer was flushed")
	m := scrape(t, p.URL)
	require.EqualValues(t, 1, sum(m, "lmproxy_requests_total{", `route="/v1/chat/completions"`, `status="200"`))
	require.Zero(t, sum(m, "lmproxy_client_disconnects_total{"))
	p.WaitIdle(t, 2*time.Second)
}

// A replica that leaves takes its series with it: replicas that come and go must not grow the
// scrape. One replaced under the same URL keeps them.
func TestMetricsDropARemovedReplica(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	gone := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	kept := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	stream := func() {
		code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "stream": true})
		require.Equal(t, http.StatusOK, code, string(body))
	}
	p.MustAdd(t, gone)
	stream() // gone is the only replica
	p.MustAdd(t, kept)
	code, _, body := postJSON(t, p.URL+"/nodes/remove", map[string]any{"url": gone.URL})
	require.Equal(t, http.StatusOK, code, string(body))
	stream() // kept is the only replica
	p.WaitIdle(t, 2*time.Second)
	count := func(rep *proxytest.Replica) float64 {
		return sum(scrape(t, p.URL), "lmproxy_requests_total", `replica="`+rep.URL+`"`)
	}
	require.EqualValues(t, 1, count(kept))
	p.MustAdd(t, kept) // a replacement keeps its series
	require.Eventually(t, func() bool {
		for k := range scrape(t, p.URL) {
			if strings.Contains(k, gone.URL) {
				return false
			}
		}
		return true
	}, 2*time.Second, 10*time.Millisecond, "the removed replica's series are dropped")
	require.EqualValues(t, 1, count(kept))
}
