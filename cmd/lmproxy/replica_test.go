package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestReplicaHelpListsFaultFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, runReplica(context.Background(), []string{"--help"}, &stdout, &stderr))
	for _, want := range []string{"--health STATUS", "--error-status STATUS", "--cut-after N", "--hang", "LMPROXY_CUT_AFTER"} {
		require.Contains(t, stdout.String(), want)
	}
	require.Empty(t, stderr.String())
}

func TestReplicaRegistersWithProxyAndLeavesOnCancel(t *testing.T) {
	_, proxy := startServe(t)
	r := start(t, runReplica, "--port", "0", "--proxy-url", proxy, "--model", "m1,m2")
	line := r.stdout.waitFor(t, "replica listening on ")
	replica := strings.TrimSpace(strings.TrimPrefix(line, "replica listening on "))
	require.True(t, strings.HasPrefix(replica, "http://127.0.0.1:"), line)

	waitRegistered(t, proxy, replica)
	require.Equal(t, 0, r.stop(t))
	// The replica leaves the proxy before the command returns: no wait.
	status, err := nodesStatus(newClient(t), proxy)
	require.NoError(t, err)
	require.NotContains(t, status, replica)
}

// startReplica runs `lmproxy replica` on a free port with args and returns it with its URL.
func startReplica(t *testing.T, args ...string) (*started, string) {
	t.Helper()
	r := start(t, runReplica, append([]string{"--port", "0"}, args...)...)
	line := r.stdout.waitFor(t, "replica listening on ")
	return r, strings.TrimSpace(strings.TrimPrefix(line, "replica listening on "))
}

// chat posts a chat request to the replica at url; ctx bounds it.
func chat(ctx context.Context, c *http.Client, url string, stream bool) (*http.Response, error) {
	body := `{"model":"sim-model","messages":[{"role":"user","content":"hi"}],"stream":` + strconv.FormatBool(stream) + `}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.Do(req)
}

func TestReplicaErrorStatusFlag(t *testing.T) {
	_, url := startReplica(t, "--error-status", "503")
	resp, err := chat(context.Background(), newClient(t), url, true)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 503, resp.StatusCode)
	var body struct {
		Type string
		Code int
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.Equal(t, "server_error", body.Type, "LMDeploy's error body")
	require.Equal(t, 503, body.Code)
}

func TestReplicaCutAfterFlag(t *testing.T) {
	_, url := startReplica(t, "--cut-after", "2", "--tokens", "5")
	c := newClient(t)
	resp, err := chat(context.Background(), c, url, true)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	var events int
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "data: ") {
			events++
		}
	}
	require.Equal(t, 2, events)
	require.ErrorIs(t, sc.Err(), io.ErrUnexpectedEOF)

	_, err = chat(context.Background(), c, url, false)
	require.Error(t, err, "a non-stream answer is broken before any byte")
}

func TestReplicaHangFlag(t *testing.T) {
	r, url := startReplica(t, "--hang")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := chat(ctx, newClient(t), url, false)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, 0, r.stop(t))
}

// requireHealth checks what GET /health of the replica at url answers.
func requireHealth(t *testing.T, url string, code int, status string) {
	t.Helper()
	resp, err := newClient(t).Get(url + "/health")
	require.NoError(t, err)
	defer resp.Body.Close()
	var body struct{ Status string }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.Equal(t, code, resp.StatusCode)
	require.Equal(t, status, body.Status)
}

func TestReplicaHealthFlagAndEnv(t *testing.T) {
	_, url := startReplica(t, "--health", "Sleeping")
	requireHealth(t, url, 200, "sleeping")

	t.Setenv("LMPROXY_HEALTH", "initializing")
	_, url = startReplica(t)
	requireHealth(t, url, 503, "initializing")
}

func TestReplicaControlAPISwitchesHealth(t *testing.T) {
	_, url := startReplica(t)
	resp, err := newClient(t).Post(url+"/sim/health", "application/json", strings.NewReader(`{"status":"sleeping"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	requireHealth(t, url, 200, "sleeping")
}

// exited waits for the command to end by itself and returns its exit status.
func (s *started) exited(t *testing.T) int {
	t.Helper()
	select {
	case code := <-s.code:
		s.code <- code // stop, in the cleanup, reads it again
		return code
	case <-time.After(10 * time.Second):
		t.Fatal("command did not exit within 10s")
		return -1
	}
}

func TestReplicaExitsAfterTerminateAndLeavesTheProxy(t *testing.T) {
	_, proxy := startServe(t)
	r, replica := startReplica(t, "--proxy-url", proxy)
	waitRegistered(t, proxy, replica)

	resp, err := newClient(t).Get(replica + "/terminate")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, 0, r.exited(t))
	r.stderr.waitFor(t, "GET /terminate: shutting down")
	status, err := nodesStatus(newClient(t), proxy)
	require.NoError(t, err)
	require.NotContains(t, status, replica)
}

func TestReplicaExitsOnTheProxysNodesTerminate(t *testing.T) {
	_, proxy := startServe(t)
	r, replica := startReplica(t, "--proxy-url", proxy)
	waitRegistered(t, proxy, replica)

	resp, err := newClient(t).Post(proxy+"/nodes/terminate", "application/json", strings.NewReader(`{"url":"`+replica+`"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, 0, r.exited(t))
}
