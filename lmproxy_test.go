package lmproxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lmproxy/lmproxy"
	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
	"github.com/lmproxy/lmproxy/proxytest"
)

// TestMain fails the package when a proxy that was closed leaves a goroutine behind: a restart must
// not pile up the previous instance's actors, probes or state-file writer.
func TestMain(m *testing.M) {
	code := m.Run()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goroutine leak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// waitLimit bounds every wait on the proxy: probes run every few milliseconds here, so anything
// slower than this is a hang.
const waitLimit = 5 * time.Second

// restartConfig probes often, so restored replicas (which take no traffic until their first probe)
// become routable within milliseconds.
func restartConfig(stateFile string) proxytest.ProxyConfig {
	return proxytest.ProxyConfig{
		StateFile: stateFile,
		Actors:    actors.Config{HealthInterval: 20 * time.Millisecond, HealthTimeout: time.Second},
	}
}

// urls returns the URLs the registry lists, down replicas included.
func urls(t *testing.T, p *proxytest.Proxy) []string {
	t.Helper()
	var out []string
	for _, rs := range p.Status(t) {
		out = append(out, rs.URL)
	}
	return out
}

// replicaURLs is the sorted URL list of reps, as Status lists them.
func replicaURLs(reps ...*proxytest.Replica) []string {
	out := make([]string, len(reps))
	for i, r := range reps {
		out[i] = r.URL
	}
	slices.Sort(out)
	return out
}

// waitRoutable waits until every replica in want is healthy and routable.
func waitRoutable(t *testing.T, p *proxytest.Proxy, want ...*proxytest.Replica) {
	t.Helper()
	require.Eventually(t, func() bool {
		routable := map[string]bool{}
		for _, rs := range p.Status(t) {
			routable[rs.URL] = rs.Routable
		}
		for _, r := range want {
			if !routable[r.URL] {
				return false
			}
		}
		return true
	}, waitLimit, 5*time.Millisecond, "replicas never became routable: %+v", p.Status(t))
}

// openStream posts a stream request and returns the response once its first event arrived.
func openStream(t *testing.T, p *proxytest.Proxy) *http.Response {
	t.Helper()
	resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"sim-model","stream":true}`))
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	require.Equal(t, http.StatusOK, resp.StatusCode)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "data: {"), line)
	return resp
}

// requireEachServes proves every replica in reps takes traffic through p: as many streams as replicas
// are held open at once, and min_expected_latency sends each to an idle replica, so each replica gets
// exactly one. Luck plays no part: the choice and the in-flight increment are one step.
func requireEachServes(t *testing.T, p *proxytest.Proxy, reps ...*proxytest.Replica) {
	t.Helper()
	before := map[*proxytest.Replica]int{}
	for _, r := range reps {
		before[r] = len(r.Requests("/v1/chat/completions"))
	}
	var held []*http.Response
	for range reps {
		held = append(held, openStream(t, p))
	}
	for _, r := range reps {
		require.Equal(t, before[r]+1, len(r.Requests("/v1/chat/completions")), "replica %s", r.URL)
	}
	for _, resp := range held {
		resp.Body.Close()
	}
	p.WaitIdle(t, waitLimit)
}

// slowStreams makes each replica's streams last an hour after their first event, so a stream a test
// holds open keeps its replica busy until the test closes it.
func slowStreams(reps ...*proxytest.Replica) {
	for _, r := range reps {
		r.SetTiming(0, time.Hour, 2)
	}
}

// A proxy restarted on the same state file lists the replicas registered before the stop and routes
// to every one of them, without any replica registering again.
func TestRestartRestoresReplicasFromStateFile(t *testing.T) {
	state := filepath.Join(t.TempDir(), "registry.json")
	first := proxytest.StartProxy(t, restartConfig(state))
	reps := []*proxytest.Replica{
		proxytest.StartReplica(t, proxytest.ReplicaConfig{}),
		proxytest.StartReplica(t, proxytest.ReplicaConfig{}),
		proxytest.StartReplica(t, proxytest.ReplicaConfig{}),
	}
	first.MustAdd(t, reps...)
	// No Flush: Close itself must leave the registrations on disk.
	first.Close()

	second := proxytest.StartProxy(t, restartConfig(state))
	require.Equal(t, replicaURLs(reps...), urls(t, second))
	waitRoutable(t, second, reps...)
	slowStreams(reps...)
	requireEachServes(t, second, reps...)
	for _, r := range reps {
		require.Len(t, r.Requests("/v1/models"), 1, "only the first proxy's /nodes/add probed the model list")
	}
}

// A restored replica takes no traffic until a probe proved it serves: one that died while the proxy
// was down is never sent a request, so its circuit never even opens.
func TestRestoredReplicaIsProbedBeforeItGetsTraffic(t *testing.T) {
	state := filepath.Join(t.TempDir(), "registry.json")
	first := proxytest.StartProxy(t, restartConfig(state))
	live := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	dead := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	first.MustAdd(t, live, dead)
	first.Close()
	require.NoError(t, dead.Close())
	// Keep the dead replica's port: another test's server (any package's, running alongside)
	// could be given it and answer the probes. What listens there now hangs up at once.
	grave, err := net.Listen("tcp", strings.TrimPrefix(dead.URL, "http://"))
	require.NoError(t, err)
	defer grave.Close()
	go func() {
		for {
			c, err := grave.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	second := proxytest.StartProxy(t, restartConfig(state))
	// Until its first probe even the live replica is not routable (503): wait for it.
	waitRoutable(t, second, live)
	for i := 0; i < 10; i++ {
		resp, err := http.Post(second.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"sim-model"}`))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	require.Eventually(t, func() bool {
		for _, rs := range second.Status(t) {
			if rs.URL == dead.URL {
				return rs.Health == messages.HealthDown
			}
		}
		return false
	}, waitLimit, 5*time.Millisecond, "the dead replica was never probed out: %+v", second.Status(t))
	require.Len(t, live.Requests("/v1/chat/completions"), 10)
	for _, rs := range second.Status(t) {
		require.Equal(t, messages.CircuitClosed, rs.Circuit, "%s: no request may have tried it", rs.URL)
	}
	second.WaitIdle(t, waitLimit)
}

// A corrupt state file does not stop the proxy: it is renamed aside with its bytes intact, the proxy
// starts empty and serves, and the next registration writes a good file again.
func TestCorruptStateFileIsSetAsideAndProxyStarts(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "registry.json")
	garbage := []byte("{\"version\": 1, \"replicas\": [{\"url\": \"http://a:1\", \"mod")
	require.NoError(t, os.WriteFile(state, garbage, 0o600))

	log, hook := logtest.NewNullLogger()
	lp, err := lmproxy.Start(lmproxy.Config{Addr: "127.0.0.1:0", StateFile: state, Log: log,
		Actors: actors.Config{HealthInterval: 20 * time.Millisecond}})
	require.NoError(t, err, "a corrupt state file must not keep the proxy from starting")
	p := &proxytest.Proxy{Proxy: lp, URL: "http://" + lp.Server.Addr().String()}
	t.Cleanup(p.Close)

	aside, err := filepath.Glob(state + ".corrupt-*")
	require.NoError(t, err)
	require.Len(t, aside, 1, "renamed aside in the same directory")
	kept, err := os.ReadFile(aside[0])
	require.NoError(t, err)
	require.Equal(t, garbage, kept)
	var warned bool
	for _, e := range hook.AllEntries() {
		warned = warned || (e.Level == logrus.WarnLevel && e.Data["moved_to"] == aside[0])
	}
	require.True(t, warned, "the corrupt file is reported with where it went")
	require.Empty(t, p.Status(t))

	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	p.MustAdd(t, rep)
	resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"sim-model"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	require.NoError(t, p.Flush(ctx))
	var saved map[string]string // LMDeploy's proxy_config.json: URL → the JSON text of its status
	data, err := os.ReadFile(state)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &saved))
	require.Len(t, saved, 1)
	require.Contains(t, saved, rep.URL)
	p.WaitIdle(t, waitLimit)
}

// A replica removed through /nodes/remove stays removed after a restart; the others come back.
func TestRemovalIsPersistedAcrossRestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "registry.json")
	first := proxytest.StartProxy(t, restartConfig(state))
	reps := []*proxytest.Replica{
		proxytest.StartReplica(t, proxytest.ReplicaConfig{}),
		proxytest.StartReplica(t, proxytest.ReplicaConfig{}),
		proxytest.StartReplica(t, proxytest.ReplicaConfig{}),
	}
	first.MustAdd(t, reps...)
	code, body := first.Post(t, "/nodes/remove", map[string]string{"url": reps[1].URL})
	require.Equal(t, http.StatusOK, code, string(body))
	first.Close()

	second := proxytest.StartProxy(t, restartConfig(state))
	kept := []*proxytest.Replica{reps[0], reps[2]}
	require.Equal(t, replicaURLs(kept...), urls(t, second))
	waitRoutable(t, second, kept...)
	slowStreams(reps...)
	requireEachServes(t, second, kept...)
	require.Empty(t, reps[1].Requests("/v1/chat/completions"), "the removed replica gets no traffic")

	// The restarted proxy persists its own removals too.
	code, body = second.Post(t, "/nodes/remove", map[string]string{"url": reps[0].URL})
	require.Equal(t, http.StatusOK, code, string(body))
	second.Close()
	third := proxytest.StartProxy(t, restartConfig(state))
	require.Equal(t, []string{reps[2].URL}, urls(t, third))
}
