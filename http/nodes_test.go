package http_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/messages"
	"github.com/lmproxy/lmproxy/proxytest"
)

func TestNodesAddLMDeployPayload(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"m1"}})
	code, _, body := postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+rep.URL+`", "status": {"models": ["m1"], "role": 1}}`))
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `"Added successfully"`, string(body))

	code, _, body = do(t, http.MethodGet, p.URL+"/nodes/status", "", nil)
	require.Equal(t, http.StatusOK, code)
	var st map[string]map[string]any
	require.NoError(t, json.Unmarshal(body, &st))
	require.Contains(t, st, rep.URL)
	node := st[rep.URL]
	require.EqualValues(t, 1, node["role"])
	require.Equal(t, "Hybrid", node["role_name"])
	require.Equal(t, []any{"m1"}, node["models"])
	require.EqualValues(t, 0, node["unfinished"])
	require.Equal(t, []any{}, node["latency"])
	require.Nil(t, node["speed"])
	require.Equal(t, "healthy", node["health"])
}

func TestNodesAddRoleByName(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"m1"}})
	code, _, body := postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+rep.URL+`", "status": {"models": ["m1"], "role": "Prefill", "speed": 3}}`))
	require.Equal(t, http.StatusOK, code, string(body))
	st := p.Status(t)
	require.Len(t, st, 1)
	require.Equal(t, messages.Prefill, st[0].Role)
	require.EqualValues(t, 3, st[0].Speed)
}

func TestNodesAddErrors(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"m1"}})
	empty := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	empty.SetModels([]string{})
	untrusted := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"object":"list","data":[{"id":"m1"}]}`)
	}))
	t.Cleanup(untrusted.Close)
	cases := []struct {
		name string
		body string
		code int
	}{
		{"unreachable", `{"url": "` + proxytest.DeadAddr(t) + `"}`, http.StatusBadGateway},
		{"empty model list", `{"url": "` + empty.URL + `"}`, http.StatusBadGateway},
		{"declared model missing", `{"url": "` + rep.URL + `", "status": {"models": ["other"]}}`, http.StatusBadRequest},
		{"not JSON", `{"url": `, http.StatusBadRequest},
		{"no url", `{}`, http.StatusBadRequest},
		{"bad url", `{"url": "ftp://x"}`, http.StatusBadRequest},
		// Answers that are not HTTP the proxy can read are settings to fix, not a replica starting.
		{"https to a plain replica", `{"url": "https://` + strings.TrimPrefix(rep.URL, "http://") + `", "status": {"models": ["m1"]}}`, http.StatusBadGateway},
		{"a certificate not trusted", `{"url": "` + untrusted.URL + `", "status": {"models": ["m1"]}}`, http.StatusBadGateway},
		{"credentials in the url", `{"url": "http://bob:SECRETPW@127.0.0.1:1", "status": {"models": ["m1"]}}`, http.StatusBadRequest},
		{"credentials in a url that does not parse", `{"url": "http://bob:SECRETPW@127.0.0.1:x"}`, http.StatusBadRequest},
		{"credentials without a scheme", `{"url": "admin:SECRETPW@10.0.0.1:23333"}`, http.StatusBadRequest},
		{"credentials after a short scheme", `{"url": "http:/admin:SECRETPW@h:1"}`, http.StatusBadRequest},
		{"a host that does not resolve", `{"url": "http://no-such..host:23333", "status": {"models": ["m1"]}}`, http.StatusBadGateway}, // an invalid name: no DNS query
		{"bad role", `{"url": "` + rep.URL + `", "status": {"role": "Boss"}}`, http.StatusBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, body := postJSON(t, p.URL+"/nodes/add", []byte(c.body))
			require.Equal(t, c.code, code, string(body))
			require.NotEmpty(t, decode(t, body)["detail"])
			require.NotContains(t, string(body), "SECRETPW", "a password is not echoed")
		})
	}
	require.Empty(t, p.Status(t), "a refused registration changes nothing")
}

func TestNodesAddIsUpsert(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"m1", "m2"}})
	code, _, _ := postJSON(t, p.URL+"/nodes/add", map[string]any{"url": rep.URL, "status": map[string]any{"models": []string{"m1"}}})
	require.Equal(t, http.StatusOK, code)
	code, _, _ = postJSON(t, p.URL+"/nodes/add", map[string]any{"url": rep.URL + "/", "status": map[string]any{"models": []string{"m2"}, "speed": 5}})
	require.Equal(t, http.StatusOK, code)
	st := p.Status(t)
	require.Len(t, st, 1)
	require.Equal(t, []string{"m2"}, st[0].Models)
	require.EqualValues(t, 5, st[0].Speed)
}

func TestNodesAddWithoutModelsTakesProbedOnes(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"m1"}})
	code, _, _ := postJSON(t, p.URL+"/nodes/add", map[string]any{"url": rep.URL})
	require.Equal(t, http.StatusOK, code)
	code, _, body := do(t, http.MethodGet, p.URL+"/v1/models", "", nil)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `"m1"`, mustJSON(t, decode(t, body)["data"].([]any)[0].(map[string]any)["id"]))
}

func TestNodesRemove(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{})
	code, _, body := postJSON(t, p.URL+"/nodes/remove", map[string]any{"url": reps[0].URL})
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `"Deleted successfully"`, string(body))
	code, _, _ = do(t, http.MethodPost, p.URL+"/nodes/remove?node_url="+reps[1].URL, "", nil)
	require.Equal(t, http.StatusOK, code)
	require.Empty(t, p.Status(t))
	code, _, body = postJSON(t, p.URL+"/nodes/remove", map[string]any{"url": reps[0].URL})
	require.Equal(t, http.StatusNotFound, code)
	require.NotEmpty(t, decode(t, body)["detail"])
}

func TestNodesTerminate(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{})
	reps[1].SetTerminateStatus(http.StatusInternalServerError)

	code, _, _ := postJSON(t, p.URL+"/nodes/terminate", map[string]any{"url": reps[0].URL})
	require.Equal(t, http.StatusOK, code)
	require.True(t, reps[0].Terminated())

	code, _, body := do(t, http.MethodPost, p.URL+"/nodes/terminate?node_url="+reps[1].URL, "", nil)
	require.Equal(t, http.StatusBadGateway, code)
	require.Contains(t, decode(t, body)["detail"], "500")
	require.Len(t, p.Status(t), 1, "a replica that refused stays registered")

	code, _, _ = postJSON(t, p.URL+"/nodes/terminate", map[string]any{"url": "http://127.0.0.1:1"})
	require.Equal(t, http.StatusNotFound, code)
}

// Bug: the admin JSON endpoints read a body whatever its Content-Type. They answer 415 to a type
// that is not JSON, by the rule of /v1/*, and change nothing; the query form of remove and terminate
// reads no body and takes any Content-Type.
func TestNodesWrongContentTypeIs415(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{})
	rep := reps[0]
	body := []byte(`{"url": "` + rep.URL + `"}`)
	for _, path := range []string{"/nodes/add", "/nodes/remove", "/nodes/terminate"} {
		for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "application/json;;;="} {
			code, _, b := do(t, http.MethodPost, p.URL+path, ct, body)
			require.Equal(t, http.StatusUnsupportedMediaType, code, "%s %s: %s", path, ct, b)
			require.Contains(t, decode(t, b)["detail"], ct)
		}
	}
	require.Len(t, p.Status(t), 1, "a refused request changes nothing")
	require.False(t, rep.Terminated())

	other := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	for _, ct := range []string{"", "application/json", "application/json; charset=utf-8", "application/vnd.api+json"} {
		code, _, b := do(t, http.MethodPost, p.URL+"/nodes/add", ct, []byte(`{"url": "`+other.URL+`"}`))
		require.Equal(t, http.StatusOK, code, "%q: %s", ct, b)
	}
	code, _, b := do(t, http.MethodPost, p.URL+"/nodes/remove?node_url="+other.URL, "text/plain", nil)
	require.Equal(t, http.StatusOK, code, "%s", b)
	code, _, b = do(t, http.MethodPost, p.URL+"/nodes/terminate?node_url="+rep.URL, "application/x-www-form-urlencoded", nil)
	require.Equal(t, http.StatusOK, code, "%s", b)
	require.True(t, rep.Terminated())
	require.Empty(t, p.Status(t))
}

// Bug: admin bodies were cut at 1 MiB whatever --max-body said, so a longer one failed as a 400
// "unexpected end of JSON input". They are held to the smaller of --max-body and 1 MiB, and a larger
// one gets 413 naming the limit.
func TestNodesBodyOverTheLimitIs413(t *testing.T) {
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	// padded is a body of exactly n bytes that names rep.
	padded := func(n int) []byte {
		prefix, suffix := `{"url": "`+rep.URL+`", "pad": "`, `"}`
		return []byte(prefix + strings.Repeat("x", n-len(prefix)-len(suffix)) + suffix)
	}
	cases := []struct {
		name    string
		maxBody int64
		limit   int
		shown   string
	}{
		{"--max-body below 1 MiB", 1 << 10, 1 << 10, "1KiB"},
		{"the default --max-body", 0, 1 << 20, "1MiB"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{MaxBody: c.maxBody}})
			for _, path := range []string{"/nodes/add", "/nodes/remove", "/nodes/terminate"} {
				code, _, b := postJSON(t, p.URL+path, padded(c.limit+1))
				require.Equal(t, http.StatusRequestEntityTooLarge, code, "%s: %s", path, b)
				require.Contains(t, decode(t, b)["detail"], "larger than the limit of "+c.shown)
			}
			require.Empty(t, p.Status(t))
			require.False(t, rep.Terminated())

			code, _, b := postJSON(t, p.URL+"/nodes/add", padded(c.limit))
			require.Equal(t, http.StatusOK, code, "a body of the limit is taken: %s", b)
			code, _, b = postJSON(t, p.URL+"/nodes/remove", padded(c.limit))
			require.Equal(t, http.StatusOK, code, "%s", b)
		})
	}
}

func TestNodesTerminateAll(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{})
	reps[1].SetTerminateStatus(http.StatusInternalServerError)
	code, _, body := do(t, http.MethodGet, p.URL+"/nodes/terminate_all", "", nil)
	require.Equal(t, http.StatusBadGateway, code)
	require.Contains(t, decode(t, body)["detail"], reps[1].URL)
	require.Len(t, p.Status(t), 1)

	reps[1].SetTerminateStatus(http.StatusOK)
	code, _, _ = do(t, http.MethodGet, p.URL+"/nodes/terminate_all", "", nil)
	require.Equal(t, http.StatusOK, code)
	require.Empty(t, p.Status(t))
}

func TestNodesWrongMethod(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	code, _, body := do(t, http.MethodGet, p.URL+"/nodes/add", "", nil)
	require.Equal(t, http.StatusMethodNotAllowed, code)
	require.NotEmpty(t, decode(t, body)["detail"])
	code, _, body = do(t, http.MethodGet, p.URL+"/nope", "", nil)
	require.Equal(t, http.StatusNotFound, code)
	require.NotEmpty(t, decode(t, body)["detail"])
}

func TestModelsListsEachModelOnce(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 3, proxytest.ReplicaConfig{Models: []string{"a", "b"}})
	code, _, body := do(t, http.MethodGet, p.URL+"/v1/models", "", nil)
	require.Equal(t, http.StatusOK, code)
	m := decode(t, body)
	require.Equal(t, "list", m["object"])
	data := m["data"].([]any)
	require.Len(t, data, 2)
	for _, d := range data {
		d := d.(map[string]any)
		for _, k := range []string{"id", "object", "created", "owned_by", "root", "parent", "permission"} {
			require.Contains(t, d, k)
		}
		require.Equal(t, "model", d["object"])
		require.Equal(t, "lmdeploy", d["owned_by"], "as LMDeploy's proxy answers")
	}
}

func TestHealth(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	code, _, body := do(t, http.MethodGet, p.URL+"/health", "", nil)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"status":"healthy"}`, string(body))
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// LMDeploy's api_server registers from its start-up hook, before it listens, and never again: a
// registration that declares its models is kept although the probe cannot connect, not routed to
// until the replica answers its health probe, which comes every second until then (not every
// --health-interval).
func TestNodesAddBeforeTheReplicaListens(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{Actors: actors.Config{HealthInterval: time.Hour}})
	url := proxytest.DeadAddr(t)
	code, _, body := postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+url+`", "status": {"models": ["m1"], "role": 1}}`))
	require.Equal(t, http.StatusOK, code, string(body))
	require.JSONEq(t, `"Added successfully"`, string(body))
	st := p.Status(t)
	require.Len(t, st, 1)
	require.Equal(t, []string{"m1"}, st[0].Models)
	require.NotEqual(t, messages.HealthHealthy, st[0].Health, "not routable before it answers")
	code, _, body = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "m1"})
	require.Equal(t, http.StatusServiceUnavailable, code, string(body))

	proxytest.StartReplica(t, proxytest.ReplicaConfig{Port: portOf(t, url), Models: []string{"m1"}})
	require.Eventually(t, func() bool { return p.Status(t)[0].Health == messages.HealthHealthy }, 5*time.Second, 10*time.Millisecond,
		"routable once it answers, long before the health interval")
	code, _, body = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "m1"})
	require.Equal(t, http.StatusOK, code, string(body))
	p.WaitIdle(t, 2*time.Second) // the answer leaves before its lease is released
}

// portOf returns the port of a replica URL such as DeadAddr's.
func portOf(t *testing.T, url string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(strings.TrimPrefix(url, "http://"))
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	return n
}

// An api_server that listens seconds after it registered (loading its model) was evicted by the
// second of its probes a second apart (--health-failures 2), left /nodes/status, and came back only
// at the down list's backoff, a whole --health-interval later. For its first health interval it now
// stays listed as unknown, and is routable within about a probe's gap of listening.
func TestReplicaListeningSecondsAfterItsAddIsNotEvicted(t *testing.T) {
	const late = 3 * time.Second
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{Actors: actors.Config{HealthInterval: time.Hour, HealthFailures: 2}})
	url := proxytest.DeadAddr(t)
	added := time.Now()
	code, _, body := postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+url+`", "status": {"models": ["m1"], "role": 1}}`))
	require.Equal(t, http.StatusOK, code, string(body))

	// health polls the replica's health until it is not unknown or the deadline passes; it is never
	// down meanwhile.
	health := func(deadline time.Time) messages.Health {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			st := p.Status(t)
			require.Len(t, st, 1)
			h := st[0].Health
			require.NotEqual(t, messages.HealthDown, h, "%v after the add", time.Since(added))
			if h != messages.HealthUnknown || time.Now().After(deadline) {
				return h
			}
			<-tick.C
		}
	}
	require.Equal(t, messages.HealthUnknown, health(added.Add(late)), "nothing listens yet")
	proxytest.StartReplica(t, proxytest.ReplicaConfig{Port: portOf(t, url), Models: []string{"m1"}})
	listening := time.Now()
	require.Equal(t, messages.HealthHealthy, health(listening.Add(2500*time.Millisecond)),
		"healthy within a probe's gap of listening")
	t.Logf("healthy %v after it listened", time.Since(listening))
	code, _, body = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "m1"})
	require.Equal(t, http.StatusOK, code, string(body))
	p.WaitIdle(t, 2*time.Second)
}

// A 405 names the methods the route serves (RFC 9110 §15.5.6), in the body group of its path.
func TestWrongMethodNamesTheAllowedOnes(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	cases := []struct{ method, path, allow string }{
		{http.MethodGet, "/v1/chat/completions", "POST"},
		{http.MethodGet, "/v1/embeddings", "POST"},
		{http.MethodDelete, "/v1/models", "GET, HEAD"},
		{http.MethodPost, "/v1/models/m1", "GET, HEAD"},
		{http.MethodGet, "/nodes/add", "POST"},
		{http.MethodPost, "/nodes/status", "GET, HEAD"},
		{http.MethodPost, "/health", "GET, HEAD"},
		{http.MethodHead, "/nodes/terminate_all", "GET"}, // a GET that acts: HEAD must not
	}
	for _, c := range cases {
		code, h, body := do(t, c.method, p.URL+c.path, "application/json", []byte(`{"model":"m1"}`))
		require.Equal(t, http.StatusMethodNotAllowed, code, "%s %s: %s", c.method, c.path, body)
		require.Equal(t, c.allow, h.Get("Allow"), "%s %s", c.method, c.path)
		if c.method == http.MethodHead {
			require.Empty(t, body)
		} else if strings.HasPrefix(c.path, "/v1/") {
			require.Equal(t, "invalid_request_error", decode(t, body)["type"], "%s %s: %s", c.method, c.path, body)
		} else {
			require.NotEmpty(t, decode(t, body)["detail"], "%s %s: %s", c.method, c.path, body)
		}
	}
}

// HEAD works wherever a GET only reads (uptime checks use HEAD /health): the GET's status and
// headers, no body.
func TestHeadOnReadOnlyRoutes(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{})
	for _, path := range []string{"/health", "/metrics", "/openapi.json", "/nodes/status", "/v1/models", "/v1/models/sim-model"} {
		code, h, body := do(t, http.MethodHead, p.URL+path, "", nil)
		require.Equal(t, http.StatusOK, code, path)
		require.Empty(t, body, path)
		_, gh, _ := do(t, http.MethodGet, p.URL+path, "", nil)
		require.Equal(t, gh.Get("Content-Type"), h.Get("Content-Type"), path)
	}
}

// OPTIONS * asks about the server as a whole: 200 with what it serves, not a redirect to a path.
func TestOptionsAsterisk(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	conn, err := net.Dial("tcp", strings.TrimPrefix(p.URL, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	br := bufio.NewReader(conn)
	for _, c := range []struct {
		method string
		code   int
	}{{http.MethodOptions, http.StatusOK}, {http.MethodGet, http.StatusBadRequest}} {
		fmt.Fprintf(conn, "%s * HTTP/1.1\r\nHost: x\r\n\r\n", c.method)
		resp, err := http.ReadResponse(br, &http.Request{Method: c.method})
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, c.code, resp.StatusCode, c.method)
		if c.code == http.StatusOK {
			require.Equal(t, "GET, HEAD, POST, OPTIONS", resp.Header.Get("Allow"))
		}
	}
}

// Adding a registered URL again without a status keeps its role and speed, as LMDeploy's proxy keeps
// its Status (its docs register with {"url": ...} alone); the models are probed again. A negative
// speed, the "unknown" of LMDeploy's own example, counts as none.
func TestNodesAddWithoutStatusKeepsRoleAndSpeed(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"m1"}})
	code, _, body := postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+rep.URL+`", "status": {"models": ["m1"], "role": 3, "speed": 5}}`))
	require.Equal(t, http.StatusOK, code, string(body))
	code, _, body = postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+rep.URL+`"}`))
	require.Equal(t, http.StatusOK, code, string(body))
	st := p.Status(t)
	require.Len(t, st, 1)
	require.Equal(t, messages.Decode, st[0].Role)
	require.EqualValues(t, 5, st[0].Speed)
	require.Equal(t, []string{"m1"}, st[0].Models)

	code, _, body = postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+rep.URL+`", "status": {"models": ["m1"], "speed": -1}}`))
	require.Equal(t, http.StatusOK, code, string(body))
	st = p.Status(t)
	require.Equal(t, messages.Hybrid, st[0].Role, "a status given is the whole registration")
	require.Zero(t, st[0].Speed)
}

// An api_server run with --api-keys answers the model probe 401: a registration that declares its
// models is taken (the replica answers; clients send it their key), one that does not is refused.
func TestNodesAddReplicaThatWantsAKey(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/health":
			io.WriteString(w, `{"status":"healthy"}`)
		case r.Header.Get("Authorization") != "Bearer k":
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"detail":"Invalid API key"}`)
		case r.URL.Path == "/v1/models":
			io.WriteString(w, `{"object":"list","data":[{"id":"m1"}]}`)
		default:
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"ok":true}`)
		}
	}))
	t.Cleanup(up.Close)
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	code, _, body := postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+up.URL+`"}`))
	require.Equal(t, http.StatusBadGateway, code, string(body))
	require.Contains(t, decode(t, body)["detail"], "401")

	code, _, body = postJSON(t, p.URL+"/nodes/add", []byte(`{"url": "`+up.URL+`", "status": {"models": ["m1"]}}`))
	require.Equal(t, http.StatusOK, code, string(body))
	st := p.Status(t)
	require.Len(t, st, 1)
	require.Equal(t, messages.HealthHealthy, st[0].Health)
	code, _, body = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "m1"}, "Authorization", "Bearer k")
	require.Equal(t, http.StatusOK, code, string(body))
}
