package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/messages"
	"github.com/lmproxy/lmproxy/proxytest"
)

// nodesCmd runs `lmproxy nodes args...` in-process and returns its exit status, stdout and stderr. The
// environment variables of its flags are cleared, so a developer's own settings do not leak in.
func nodesCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	for _, v := range []string{"PROXY", "ADMIN_KEY", "TIMEOUT", "JSON", "INCLUDE_DOWN", "MODEL", "ROLE", "SPEED"} {
		if _, set := os.LookupEnv(envPrefix + v); set {
			t.Setenv(envPrefix+v, "")
		}
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), append([]string{"nodes"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// tableRows splits the status table into its rows' fields, the header first.
func tableRows(t *testing.T, out string) [][]string {
	t.Helper()
	var rows [][]string
	for l := range strings.Lines(out) {
		rows = append(rows, strings.Fields(l))
	}
	require.NotEmpty(t, rows, "no table in %q", out)
	require.Equal(t, []string{"URL", "ROLE", "MODELS", "HEALTH", "IN-FLIGHT", "LATENCY", "CIRCUIT"}, rows[0])
	return rows
}

func TestNodesStatusPrintsATableSortedByURL(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{Models: []string{"m1", "m2"}})
	code, body := p.Post(t, "/v1/chat/completions", map[string]any{"model": "m1", "messages": []any{}})
	require.Equal(t, http.StatusOK, code, "%s", body)
	p.WaitIdle(t, 5*time.Second)

	require.Eventually(t, func() bool {
		return slices.ContainsFunc(p.Status(t), func(s messages.ReplicaStatus) bool { return len(s.Latency) > 0 })
	}, 5*time.Second, 5*time.Millisecond, "no latency recorded")

	code, out, errOut := nodesCmd(t, "status", "--proxy", p.URL)
	require.Equal(t, 0, code, errOut)
	rows := tableRows(t, out)
	urls := []string{reps[0].URL, reps[1].URL}
	slices.Sort(urls)
	require.Len(t, rows, 3)
	for i, r := range rows[1:] {
		require.Equal(t, []string{urls[i], "Hybrid", "m1,m2", "healthy", "0"}, r[:5])
		require.Equal(t, "closed", r[6])
		if r[5] != "-" {
			_, err := time.ParseDuration(r[5])
			require.NoError(t, err, "latency column %q", r[5])
		}
	}
	require.True(t, rows[1][5] != "-" || rows[2][5] != "-", "no mean latency shown:\n%s", out)
}

func TestNodesStatusJSONIsTheProxysAnswer(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{})
	code, out, errOut := nodesCmd(t, "status", "--json", "--proxy", p.URL)
	require.Equal(t, 0, code, errOut)
	require.True(t, strings.HasSuffix(out, "}\n"), out)

	resp, err := http.Get(p.URL + "/nodes/status")
	require.NoError(t, err)
	defer resp.Body.Close()
	var direct bytes.Buffer
	direct.ReadFrom(resp.Body)
	require.JSONEq(t, direct.String(), out)
	for _, r := range reps {
		require.Contains(t, out, `"`+r.URL+`"`)
	}
}

func TestNodesStatusIncludeDown(t *testing.T) {
	cfg := proxytest.ProxyConfig{Actors: actors.Config{HealthInterval: 10 * time.Millisecond, HealthFailures: 1}}
	p, reps := proxytest.StartCluster(t, cfg, 2, proxytest.ReplicaConfig{})
	reps[1].SetHealth("unhealthy")
	require.Eventually(t, func() bool {
		return slices.ContainsFunc(p.Status(t), func(s messages.ReplicaStatus) bool {
			return s.URL == reps[1].URL && s.Health == messages.HealthDown
		})
	}, 5*time.Second, 5*time.Millisecond, "replica not evicted")

	code, out, errOut := nodesCmd(t, "status", "--proxy", p.URL)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, reps[0].URL)
	require.NotContains(t, out, reps[1].URL)

	code, out, errOut = nodesCmd(t, "status", "--include-down", "--proxy", p.URL)
	require.Equal(t, 0, code, errOut)
	for _, r := range tableRows(t, out)[1:] {
		if r[0] == reps[1].URL {
			require.Equal(t, "down", r[3])
			return
		}
	}
	t.Fatalf("down replica missing from:\n%s", out)
}

func TestNodesAddRemoveTerminateRoundTrip(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	r1 := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"a", "b"}})
	r2 := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"c"}})

	code, out, errOut := nodesCmd(t, "add", r1.URL, "--model", "a", "--role", "Prefill", "--speed", "3", "--proxy", p.URL)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "Added successfully: "+r1.URL+"\n", out)
	// The URL may follow the flags too; no --model registers what the probe lists.
	code, out, errOut = nodesCmd(t, "add", "--proxy", p.URL, "--json", r2.URL)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "\"Added successfully\"\n", out)
	byURL := map[string]messages.ReplicaStatus{}
	for _, s := range p.Status(t) {
		byURL[s.URL] = s
	}
	require.Equal(t, messages.Registration{URL: r1.URL, Models: []string{"a"}, Role: messages.Prefill, Speed: 3}, byURL[r1.URL].Registration)
	require.Equal(t, []string{"c"}, byURL[r2.URL].Models)
	require.Equal(t, messages.Hybrid, byURL[r2.URL].Role)

	code, out, errOut = nodesCmd(t, "remove", r1.URL, "--proxy", p.URL)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "Deleted successfully: "+r1.URL+"\n", out)
	code, out, errOut = nodesCmd(t, "remove", r1.URL, "--proxy", p.URL)
	require.Equal(t, 1, code)
	require.Empty(t, out)
	requireOneLine(t, errOut, "HTTP 404: replica "+r1.URL+" is not registered")

	code, out, errOut = nodesCmd(t, "terminate", r2.URL, "--proxy", p.URL)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, "Terminated successfully: "+r2.URL+"\n", out)
	require.True(t, r2.Terminated())
	require.Empty(t, p.Status(t))
}

// The proxy's refusals reach the user as one line with the proxy's own message.
func TestNodesRefusalsAreOneLineWithTheProxysDetail(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{})

	code, _, errOut := nodesCmd(t, "add", reps[0].URL, "--model", "nope", "--proxy", p.URL)
	require.Equal(t, 1, code)
	requireOneLine(t, errOut, `lmproxy nodes add: the proxy at `+p.URL+` answered HTTP 400: model "nope" is not served by`)

	reps[0].SetTerminateStatus(http.StatusForbidden)
	code, _, errOut = nodesCmd(t, "terminate", reps[0].URL, "--proxy", p.URL)
	require.Equal(t, 1, code)
	requireOneLine(t, errOut, "HTTP 502: "+reps[0].URL+" refused to terminate: HTTP 403")
	require.Len(t, p.Status(t), 1, "a replica that refused stays registered")
}

func TestNodesProxyDownExits1WithOneLine(t *testing.T) {
	dead := proxytest.DeadAddr(t)
	for _, args := range [][]string{{"status"}, {"add", "http://127.0.0.1:9"}, {"remove", "http://127.0.0.1:9"}} {
		code, out, errOut := nodesCmd(t, append(args, "--proxy", dead)...)
		require.Equal(t, 1, code, args)
		require.Empty(t, out)
		requireOneLine(t, errOut, "lmproxy nodes "+args[0]+": cannot reach the proxy at "+dead+": ")
	}
}

func TestNodesTimeoutExits1WithOneLine(t *testing.T) {
	// A proxy that never answers: the handler holds the request until the client gives up.
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(hung.Close)
	code, _, errOut := nodesCmd(t, "status", "--proxy", hung.URL, "--timeout", "50ms")
	require.Equal(t, 1, code)
	requireOneLine(t, errOut, "no answer from the proxy at "+hung.URL+" within 50ms (--timeout)")
}

func TestNodesAdminKey(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{AdminKeys: []string{"k"}}})
	r := proxytest.StartReplica(t, proxytest.ReplicaConfig{})

	code, _, errOut := nodesCmd(t, "add", r.URL, "--proxy", p.URL)
	require.Equal(t, 1, code)
	requireOneLine(t, errOut, "HTTP 401: missing API key")
	require.Contains(t, errOut, "--admin-key")
	require.Empty(t, p.Status(t))

	code, _, errOut = nodesCmd(t, "add", r.URL, "--proxy", p.URL, "--admin-key", "k")
	require.Equal(t, 0, code, errOut)

	code, _, errOut = nodesCmd(t, "status", "--proxy", p.URL, "--admin-key", "wrong")
	require.Equal(t, 1, code)
	requireOneLine(t, errOut, "HTTP 401: invalid API key")

	code, out, errOut := nodesCmd(t, "status", "--proxy", p.URL, "--admin-key", "k")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, r.URL)

	t.Setenv("LMPROXY_PROXY", p.URL)
	t.Setenv("LMPROXY_ADMIN_KEY", "k")
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, run(context.Background(), []string{"nodes", "remove", r.URL}, &stdout, &stderr), stderr.String())
	require.Empty(t, p.Status(t))
}

func TestNodesBadUsageExits2WithOneLine(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, `lmproxy nodes: unknown action "bogus"`},
		{[]string{"status", "--bogus"}, "lmproxy nodes status: unknown flag --bogus"},
		{[]string{"status", "extra"}, `unexpected argument "extra"`},
		{[]string{"status", "--model", "m"}, "unknown flag --model"},
		{[]string{"add"}, "lmproxy nodes add: missing the replica's URL"},
		{[]string{"add", "not-a-url"}, `replica URL: "not-a-url" is not a URL`},
		{[]string{"add", "http://a:1", "http://b:1"}, `unexpected argument "http://b:1"`},
		{[]string{"add", "http://a:1", "--role", "Leader"}, "--role"},
		{[]string{"add", "http://a:1", "--speed", "-1"}, "--speed"},
		{[]string{"remove", "http://a:1", "--proxy", "nope"}, "--proxy"},
		{[]string{"terminate", "http://a:1", "--timeout", "0s"}, "--timeout"},
	}
	for _, c := range cases {
		code, out, errOut := nodesCmd(t, c.args...)
		require.Equal(t, 2, code, c.args)
		require.Empty(t, out, c.args)
		requireOneLine(t, errOut, c.want)
	}
	code, out, errOut := nodesCmd(t)
	require.Equal(t, 2, code)
	require.Empty(t, out)
	require.Contains(t, errOut, "Usage: lmproxy nodes")
}

func TestNodesHelp(t *testing.T) {
	code, out, errOut := nodesCmd(t, "--help")
	require.Equal(t, 0, code)
	require.Empty(t, errOut)
	for _, a := range []string{"status", "add URL", "remove URL", "terminate URL", "LMPROXY_ADMIN_KEY"} {
		require.Contains(t, out, a)
	}
	code, out, errOut = nodesCmd(t, "add", "--help")
	require.Equal(t, 0, code)
	require.Empty(t, errOut)
	for _, f := range []string{"--model", "--role", "--speed", "--proxy", "--admin-key", "LMPROXY_ADMIN_KEY", "(default http://127.0.0.1:8000)", "(default 10s)"} {
		require.Contains(t, out, f)
	}
}

func TestMeanLatency(t *testing.T) {
	cases := []struct {
		window []float64
		want   string
	}{
		{nil, "-"},
		{[]float64{1.5, 2.5}, "2s"},
		{[]float64{1.234}, "1.23s"},
		{[]float64{0.0456, 0.0456}, "45.6ms"},
		{[]float64{0.000789}, "789µs"},
		{[]float64{0.0000004, 0}, "0s"},
	}
	for _, c := range cases {
		require.Equal(t, c.want, meanLatency(c.window), c.window)
	}
}

func TestErrorDetail(t *testing.T) {
	for body, want := range map[string]string{
		`{"detail":"replica x is not registered"}`:                   "replica x is not registered",
		`{"detail":[{"loc":["body","url"],"msg":"field required"}]}`: `[{"loc":["body","url"],"msg":"field required"}]`,
		`{"error":{"message":"invalid API key","code":401}}`:         "invalid API key",
		"<html>\n<body>Bad Gateway</body>\n</html>\n":                "<html> <body>Bad Gateway</body> </html>",
		"": "Bad Gateway",
	} {
		require.Equal(t, want, errorDetail(http.StatusBadGateway, []byte(body)))
	}
}
