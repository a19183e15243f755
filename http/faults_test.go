package http_test

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
	"github.com/lmproxy/lmproxy/proxytest"
)

// faultWait bounds every wait of these tests; probes and timeouts here are milliseconds.
const faultWait = 5 * time.Second

// replicaStatus returns the registry's view of one replica, down or not.
func replicaStatus(t *testing.T, p *proxytest.Proxy, url string) messages.ReplicaStatus {
	t.Helper()
	for _, rs := range p.Status(t) {
		if rs.URL == url {
			return rs
		}
	}
	t.Fatalf("replica %s is not registered", url)
	return messages.ReplicaStatus{}
}

// onlyOneGot returns the one replica of reps that received a request on path, failing the test if
// none or several did.
func onlyOneGot(t *testing.T, path string, reps ...*proxytest.Replica) *proxytest.Replica {
	t.Helper()
	var got *proxytest.Replica
	for _, r := range reps {
		if len(r.Requests(path)) > 0 {
			require.Nil(t, got, "the request reached two replicas")
			got = r
		}
	}
	require.NotNil(t, got, "no replica received the request")
	return got
}

// A replica process that dies while it streams (its listener and connections closed, not a polite
// error) ends the client's stream with exactly one SSE error event; its in-flight count falls back to
// 0, and later requests are served by the replica that is left.
func TestReplicaKilledMidStream(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{})
	for _, r := range reps {
		r.SetTiming(0, time.Hour, 4) // the second event would come after an hour
	}
	resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"sim-model","stream":true}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	rd := bufio.NewReader(resp.Body)
	first, err := rd.ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(first, "data: {"), first)

	victim := onlyOneGot(t, "/v1/chat/completions", reps...)
	survivor := reps[0]
	if victim == reps[0] {
		survivor = reps[1]
	}
	require.NoError(t, victim.Close())

	var events []string
	sc := bufio.NewScanner(rd)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, d)
		}
	}
	require.NoError(t, sc.Err(), "the proxy ends the stream cleanly after its error event")
	require.Len(t, events, 1, "exactly one event after the kill: %q", events)
	e, ok := decode(t, []byte(events[0]))["error"].(map[string]any)
	require.True(t, ok, "an error event: %s", events[0])
	require.Equal(t, "server_error", e["type"])
	require.EqualValues(t, http.StatusBadGateway, e["code"])
	p.WaitIdle(t, faultWait)

	survivor.SetTiming(0, 0, 4)
	for i := 0; i < 4; i++ {
		code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
		require.Equal(t, http.StatusOK, code, string(body))
	}
	require.Len(t, survivor.Requests("/v1/chat/completions"), 4)
	p.WaitIdle(t, faultWait)
	require.EqualValues(t, 1, sum(scrape(t, p.URL), "lmproxy_upstream_errors_total{", `replica="`+victim.URL+`"`, `kind="upstream_error"`))
}

// A replica that hangs gets the --upstream-timeout and no more: the client gets 504 (before the
// first event) or a final 504 error event (mid-stream), never a wait without end, and the replica
// sees its request cancelled.
func TestHangingReplicaTimesOut(t *testing.T) {
	const timeout = 300 * time.Millisecond
	cases := []struct {
		name      string
		stream    bool
		midStream bool // the answer began: the timeout arrives as the stream's last event
		setup     func(r *proxytest.Replica)
	}{
		{"non-stream answer never comes", false, false, func(r *proxytest.Replica) { r.SetFault(proxytest.Fault{Hang: true}) }},
		{"stream never starts", true, false, func(r *proxytest.Replica) { r.SetFault(proxytest.Fault{Hang: true}) }},
		{"stream stalls after its first event", true, true, func(r *proxytest.Replica) { r.SetTiming(0, time.Hour, 4) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttpTimeout(timeout)}, 1, proxytest.ReplicaConfig{})
			c.setup(reps[0])
			body := `{"model":"sim-model","stream":` + map[bool]string{true: "true", false: "false"}[c.stream] + `}`
			start := time.Now()
			code, h, b := postJSON(t, p.URL+"/v1/chat/completions", []byte(body))
			elapsed := time.Since(start)
			require.GreaterOrEqual(t, elapsed, timeout, "not cut before the timeout")
			if c.midStream {
				require.Equal(t, http.StatusOK, code)
				require.True(t, strings.HasPrefix(h.Get("Content-Type"), "text/event-stream"))
				lines := strings.Split(strings.TrimSpace(string(b)), "\n\n")
				require.Len(t, lines, 2, "the first event, then the error event: %s", b)
				e := decode(t, []byte(strings.TrimPrefix(lines[1], "data: ")))["error"].(map[string]any)
				require.EqualValues(t, http.StatusGatewayTimeout, e["code"])
			} else {
				require.Equal(t, http.StatusGatewayTimeout, code, string(b))
				requireOpenAIError(t, b, http.StatusGatewayTimeout)
			}
			require.Eventually(t, func() bool { return reps[0].Cancelled() == 1 }, faultWait, time.Millisecond,
				"the replica must see its request cancelled")
			p.WaitIdle(t, faultWait)
		})
	}
}

// A replica whose health flaps is evicted after --health-failures failed probes and re-admitted by
// the first good one, without registering again, every time. While it is the only replica and down,
// requests get 503; once back, they are served.
func TestFlappingReplicaIsEvictedAndReadmitted(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{Actors: actors.Config{
		HealthInterval: 10 * time.Millisecond, HealthTimeout: time.Second, HealthFailures: 2,
	}}, 1, proxytest.ReplicaConfig{})
	rep := reps[0]
	for cycle := 0; cycle < 3; cycle++ {
		rep.SetHealth("unhealthy")
		require.Eventually(t, func() bool { return replicaStatus(t, p, rep.URL).Health == messages.HealthDown },
			faultWait, time.Millisecond, "cycle %d: never evicted", cycle)
		rs := replicaStatus(t, p, rep.URL)
		require.False(t, rs.Routable)
		require.GreaterOrEqual(t, rs.Failures, 2)
		require.False(t, rs.DownSince.IsZero())
		code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
		require.Equal(t, http.StatusServiceUnavailable, code, "cycle %d: %s", cycle, body)
		requireOpenAIError(t, body, http.StatusServiceUnavailable)
		code, _, body = do(t, http.MethodGet, p.URL+"/nodes/status", "", nil)
		require.Equal(t, http.StatusOK, code)
		require.NotContains(t, decode(t, body), rep.URL, "a down replica is listed only with ?include=down")

		rep.SetHealth("healthy")
		require.Eventually(t, func() bool { return replicaStatus(t, p, rep.URL).Routable },
			faultWait, time.Millisecond, "cycle %d: never re-admitted", cycle)
		rs = replicaStatus(t, p, rep.URL)
		require.Equal(t, messages.HealthHealthy, rs.Health)
		require.Zero(t, rs.Failures)
		require.True(t, rs.DownSince.IsZero())
		code, _, body = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
		require.Equal(t, http.StatusOK, code, "cycle %d: %s", cycle, body)
	}
	require.Len(t, rep.Requests("/v1/models"), 1, "re-admitted without registering again")
	require.Len(t, rep.Requests("/v1/chat/completions"), 3, "only the requests made while it was up reached it")
	p.WaitIdle(t, faultWait)
}

// A replica that refuses connections is taken out by passive health before any probe notices: with
// probes an hour apart, the first request that tries it opens its circuit (and is retried on the
// other replica, so the client sees 200), and no later request tries it again.
func TestRefusingReplicaGetsOneAttemptBeforeItsCircuitOpens(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{Actors: actors.Config{
		HealthInterval: time.Hour, CircuitCooldown: time.Hour,
	}})
	live := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	p.MustAdd(t, live)
	// One stream held on the live replica makes the dead one the least loaded: the next request
	// goes to it for sure, not by luck.
	live.SetTiming(0, time.Hour, 2)
	resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"sim-model","stream":true}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	_, err = bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	live.SetTiming(0, 0, 2)
	dead := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	p.MustAdd(t, dead)
	require.NoError(t, dead.Close()) // registered and healthy as far as the proxy knows; refuses now

	code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
	require.Equal(t, http.StatusOK, code, "the request moved to the live replica: %s", body)
	resp.Body.Close()
	rs := replicaStatus(t, p, dead.URL)
	require.Equal(t, messages.CircuitOpen, rs.Circuit, "a refused connection opens the circuit at once")
	require.Equal(t, messages.HealthHealthy, rs.Health, "no probe ran: passive health did it")
	require.False(t, rs.Routable)

	// Now a burst: nothing may try the dead replica again.
	done := make(chan int, 30)
	for i := 0; i < 30; i++ {
		go func() {
			resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"sim-model"}`))
			if err != nil {
				done <- 0
				return
			}
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	for i := 0; i < 30; i++ {
		require.Equal(t, http.StatusOK, <-done)
	}
	p.WaitIdle(t, faultWait)
	m := scrape(t, p.URL)
	require.EqualValues(t, 1, sum(m, "lmproxy_upstream_errors_total{", `replica="`+dead.URL+`"`, `kind="dial_error"`),
		"exactly one attempt was made on the dead replica")
	require.EqualValues(t, 0, sum(m, "lmproxy_upstream_errors_total{", `replica="`+live.URL+`"`))
	require.Equal(t, len(live.Requests("/v1/chat/completions")), int(sum(m, "lmproxy_requests_total{", `status="200"`, `route="/v1/chat/completions"`)),
		"every request was served by the live replica")
}

// One client must not take a one-replica deployment out of routing: requests that the replica answers
// 500, breaks mid-answer or lets outlast --upstream-timeout can all be that client's doing, so none
// of them opens the replica's circuit, however many come in a row. They still count as upstream
// errors; the next request is served.
func TestFailingRequestsNeverOpenTheCircuit(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{
		HTTP:   lmhttpTimeout(200 * time.Millisecond),
		Actors: actors.Config{HealthInterval: time.Hour, CircuitCooldown: time.Hour},
	}, 1, proxytest.ReplicaConfig{})
	rep := reps[0]
	for _, c := range []struct {
		fault proxytest.Fault
		code  int
	}{
		{proxytest.Fault{Status: http.StatusInternalServerError}, http.StatusInternalServerError},
		{proxytest.Fault{CutAfter: -1}, http.StatusBadGateway},
		{proxytest.Fault{Hang: true}, http.StatusGatewayTimeout},
	} {
		rep.SetFault(c.fault)
		for range 3 {
			code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
			require.Equal(t, c.code, code, "%+v: %s", c.fault, body)
		}
		rs := replicaStatus(t, p, rep.URL)
		require.Equal(t, messages.CircuitClosed, rs.Circuit, "%+v", c.fault)
		require.True(t, rs.Routable, "%+v", c.fault)
	}
	rep.SetFault(proxytest.Fault{})
	code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"})
	require.Equal(t, http.StatusOK, code, string(body))
	p.WaitIdle(t, faultWait)
	m := scrape(t, p.URL)
	require.EqualValues(t, 6, sum(m, "lmproxy_upstream_errors_total{", `replica="`+rep.URL+`"`, `kind="upstream_error"`))
	require.EqualValues(t, 3, sum(m, "lmproxy_upstream_errors_total{", `replica="`+rep.URL+`"`, `kind="timeout"`))
}
