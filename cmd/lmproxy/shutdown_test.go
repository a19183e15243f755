package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/proxytest"
)

// runMainEnv set to 1 makes TestMain run main() instead of the tests: the test binary becomes the
// lmproxy binary, race detector included, with no separate build.
const runMainEnv = "LMPROXY_TEST_RUN_MAIN"

// process is `lmproxy serve` running as a child process.
type process struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	url    string
	exited chan struct{} // closed when the process has exited and its output is collected
	err    error         // cmd.Wait's error, once exited is closed
}

// startProcess runs `lmproxy serve` with args on a free loopback port with JSON logs, and returns
// once it listens. The process is killed at the end of the test if it is still running.
func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	args = append([]string{"serve", "--host", "127.0.0.1", "--port", "0", "--log-format", "json"}, args...)
	p := &process{cmd: exec.Command(os.Args[0], args...), stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), runMainEnv+"=1")
	p.cmd.Stderr = p.stderr
	require.NoError(t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("lmproxy's log:\n%s", p.stderr)
		}
	})
	var entry struct{ URL string }
	require.NoError(t, json.Unmarshal([]byte(p.stderr.waitFor(t, `"msg":"listening"`)), &entry))
	require.NotEmpty(t, entry.URL)
	p.url = entry.URL
	return p
}

// wait waits for the process to exit and returns its exit status.
func (p *process) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(limit):
		t.Fatalf("lmproxy did not exit within %v", limit)
	}
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		return exit.ExitCode()
	}
	require.NoError(t, p.err)
	return p.cmd.ProcessState.ExitCode()
}

// streamResult is what one client read of its stream.
type streamResult struct {
	events []string // the data of every event
	err    error    // a read error: the stream was cut
}

// startStreams starts n stream requests against url and returns the channel of their results.
func startStreams(t *testing.T, c *http.Client, url string, n int) <-chan streamResult {
	out := make(chan streamResult, n)
	for i := 0; i < n; i++ {
		go func() {
			var res streamResult
			defer func() { out <- res }()
			resp, err := c.Post(url+"/v1/chat/completions", "application/json",
				strings.NewReader(`{"model":"sim-model","stream":true}`))
			if err != nil {
				res.err = err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				res.err = errors.New("HTTP " + resp.Status)
				return
			}
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
					res.events = append(res.events, d)
				}
			}
			res.err = sc.Err()
		}()
	}
	return out
}

// shutdownSetup starts two simulated replicas streaming tokens every 50 ms, a real lmproxy with args,
// registers the replicas and starts streams on them; it returns once every stream runs on a replica.
func shutdownSetup(t *testing.T, tokens, streams int, args ...string) (*process, []*proxytest.Replica, string, <-chan streamResult) {
	t.Helper()
	state := filepath.Join(t.TempDir(), "registry.json")
	reps := []*proxytest.Replica{
		proxytest.StartReplica(t, proxytest.ReplicaConfig{ITL: 50 * time.Millisecond, Tokens: tokens}),
		proxytest.StartReplica(t, proxytest.ReplicaConfig{ITL: 50 * time.Millisecond, Tokens: tokens}),
	}
	p := startProcess(t, append([]string{"--state-file", state}, args...)...)
	c := newClient(t)
	for _, r := range reps {
		resp, err := c.Post(p.url+"/nodes/add", "application/json", strings.NewReader(`{"url":"`+r.URL+`"}`))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	results := startStreams(t, c, p.url, streams)
	require.Eventually(t, func() bool { return reps[0].Active()+reps[1].Active() == int64(streams) },
		10*time.Second, time.Millisecond, "the streams never all ran on the replicas")
	return p, reps, state, results
}

// requireStateHolds checks that the state file lists exactly the replicas reps.
func requireStateHolds(t *testing.T, state string, reps ...*proxytest.Replica) {
	t.Helper()
	data, err := os.ReadFile(state)
	require.NoError(t, err)
	var saved map[string]string // LMDeploy's proxy_config.json: URL → the JSON text of its status
	require.NoError(t, json.Unmarshal(data, &saved), string(data))
	var got, want []string
	for url := range saved {
		got = append(got, url)
	}
	for _, r := range reps {
		want = append(want, r.URL)
	}
	require.ElementsMatch(t, want, got)
}

// requireRefusedDuringShutdown polls the proxy with new connections until one is refused, and checks
// that this happens while the streams still run: a draining proxy takes no new request, and says so
// at once (connection refused, so a client or balancer tries elsewhere) rather than after a wait.
func requireRefusedDuringShutdown(t *testing.T, url string, reps []*proxytest.Replica) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.Get(url + "/health")
		if errors.Is(err, syscall.ECONNREFUSED) {
			break
		}
		switch {
		case err == nil:
			resp.Body.Close()
			// Until the signal is handled, the proxy still answers, and answers in full.
			require.Equal(t, http.StatusOK, resp.StatusCode)
		case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
			// A connection the kernel accepted just before the listener closed is reset, unanswered:
			// the same refusal, one step later (EPIPE when the reset arrives before the request is
			// written).
		default:
			t.Fatalf("a new request during shutdown: %v", err)
		}
		require.False(t, time.Now().After(deadline), "the proxy still takes new connections 5s after SIGTERM")
		time.Sleep(2 * time.Millisecond) // poll interval; the deadline above bounds the loop
	}
	require.Positive(t, reps[0].Active()+reps[1].Active(), "refused while the streams still run")
}

// SIGTERM with 20 streams running: new connections are refused at once, the streams complete with
// every event and [DONE] well within --shutdown-timeout, the process exits 0, and the state file
// still lists both replicas.
func TestSIGTERMLetsRunningStreamsFinish(t *testing.T) {
	const streams, tokens = 20, 20
	p, reps, state, results := shutdownSetup(t, tokens, streams, "--shutdown-timeout", "10s")

	signalled := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	requireRefusedDuringShutdown(t, p.url, reps)

	for i := 0; i < streams; i++ {
		res := <-results
		require.NoError(t, res.err)
		require.Len(t, res.events, tokens+1, "every token and [DONE]: %q", res.events)
		require.Equal(t, "[DONE]", res.events[tokens])
		for _, e := range res.events[:tokens] {
			require.NotContains(t, e, `"error"`)
		}
	}
	require.Equal(t, 0, p.wait(t, 15*time.Second))
	require.Less(t, time.Since(signalled), 10*time.Second, "exited before --shutdown-timeout")
	require.Contains(t, p.stderr.String(), `"msg":"stopped"`)
	require.NotContains(t, p.stderr.String(), "were cut")
	require.Zero(t, reps[0].Cancelled()+reps[1].Cancelled(), "no stream was cut")
	requireStateHolds(t, state, reps...)
}

// SIGTERM with streams longer than --shutdown-timeout: they are cut when it runs out, the replicas
// see their requests cancelled, the access lines say the proxy cut them (not their clients), the
// process still exits 0 and the state file lists both replicas.
func TestSIGTERMCutsStreamsAtShutdownTimeout(t *testing.T) {
	const streams, tokens = 20, 400 // 20 s per stream
	p, reps, state, results := shutdownSetup(t, tokens, streams, "--shutdown-timeout", "300ms")

	signalled := time.Now()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	requireRefusedDuringShutdown(t, p.url, reps)
	require.Equal(t, 0, p.wait(t, 10*time.Second))
	require.GreaterOrEqual(t, time.Since(signalled), 300*time.Millisecond, "the streams had their --shutdown-timeout")

	for i := 0; i < streams; i++ {
		res := <-results
		require.NotEmpty(t, res.events, "the stream had begun")
		require.Error(t, res.err, "a cut stream ends in a read error, not as if complete")
		require.NotEqual(t, "[DONE]", res.events[len(res.events)-1])
	}
	require.Eventually(t, func() bool { return reps[0].Cancelled()+reps[1].Cancelled() == streams },
		5*time.Second, time.Millisecond, "the replicas must see every request cancelled: %d", reps[0].Cancelled()+reps[1].Cancelled())
	require.Contains(t, p.stderr.String(), "were cut")
	log := p.stderr.String()
	require.Equal(t, streams, strings.Count(log, `"outcome":"shutdown"`), "each cut stream's access line says the proxy cut it")
	require.NotContains(t, log, `"outcome":"client_gone"`, "no client left")
	requireStateHolds(t, state, reps...)
}
