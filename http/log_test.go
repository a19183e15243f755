package http_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

// syncBuffer is a log sink that several goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// jsonLines parses every line of b as one JSON object.
func jsonLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), "log line is not JSON: %s", sc.Text())
		out = append(out, m)
	}
	return out
}

func TestJSONAccessLogAndNoSecrets(t *testing.T) {
	var sink syncBuffer
	log := logrus.New()
	log.SetOutput(&sink)
	log.SetFormatter(&logrus.JSONFormatter{})
	cfg := proxytest.ProxyConfig{
		HTTP:   lmhttp.Config{Log: log, APIKeys: []string{"sk-very-secret"}},
		Actors: actors.Config{Log: log},
	}
	p, reps := proxytest.StartCluster(t, cfg, 1, proxytest.ReplicaConfig{Tokens: 3})
	code, _, _ := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model", "stream": true},
		"Authorization", "Bearer sk-very-secret", "X-Request-Id", "req-42")
	require.Equal(t, http.StatusOK, code)
	code, _, _ = postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"}, "Authorization", "Bearer sk-wrong-guess")
	require.Equal(t, http.StatusUnauthorized, code)
	p.WaitIdle(t, 2*time.Second)
	code, _ = p.Post(t, "/nodes/remove", map[string]any{"url": reps[0].URL})
	require.Equal(t, http.StatusOK, code)

	var access map[string]any
	require.Eventually(t, func() bool {
		for _, l := range jsonLines(t, sink.Bytes()) {
			if l["request_id"] == "req-42" && l["msg"] == "request" {
				access = l
				return true
			}
		}
		return false
	}, 2*time.Second, time.Millisecond)
	require.Equal(t, "sim-model", access["model"])
	require.Equal(t, reps[0].URL, access["replica"])
	require.EqualValues(t, 200, access["status"])
	require.Equal(t, "ok", access["outcome"])
	require.Contains(t, access, "duration_ms")
	require.Contains(t, access, "ttft_ms")
	require.Equal(t, "info", access["level"])

	msgs := map[string]bool{}
	for _, l := range jsonLines(t, sink.Bytes()) {
		msgs[l["msg"].(string)] = true
	}
	require.True(t, msgs["replica added"])
	require.True(t, msgs["replica removed"])
	require.NotContains(t, string(sink.Bytes()), "sk-very-secret")
	require.NotContains(t, string(sink.Bytes()), "sk-wrong-guess")
}

// A request still waiting for its replica when the shutdown's time runs out is cut by the proxy:
// its access line says so (503, outcome shutdown), and it is not counted as a client that left.
func TestShutdownCutIsLoggedAsShutdown(t *testing.T) {
	var sink syncBuffer
	log := logrus.New()
	log.SetOutput(&sink)
	log.SetFormatter(&logrus.JSONFormatter{})
	cfg := proxytest.ProxyConfig{HTTP: lmhttp.Config{Log: log}, Actors: actors.Config{Log: log}}
	p, reps := proxytest.StartCluster(t, cfg, 1, proxytest.ReplicaConfig{TTFT: time.Minute})

	done := make(chan error, 1)
	go func() {
		resp, err := http.Post(p.URL+"/v1/chat/completions", "application/json",
			bytes.NewReader([]byte(`{"model":"sim-model"}`)))
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	require.Eventually(t, func() bool { return reps[0].Active() == 1 }, 5*time.Second, time.Millisecond)
	require.Error(t, p.CloseWithin(50*time.Millisecond), "the request outlived the shutdown's time")
	require.Error(t, <-done, "a cut request gets no answer")

	var access map[string]any
	for _, l := range jsonLines(t, sink.Bytes()) {
		if l["msg"] == "request" && l["path"] == "/v1/chat/completions" {
			access = l
		}
	}
	require.NotNil(t, access, "the cut request has its access line")
	require.EqualValues(t, http.StatusServiceUnavailable, access["status"])
	require.Equal(t, "shutdown", access["outcome"])
}

// A request the server refuses before any route sees it (a malformed head) still has its access
// line: status, the reason and the client's address, which is all there is to find a broken client.
func TestRefusedHeadHasAnAccessLine(t *testing.T) {
	var sink syncBuffer
	log := logrus.New()
	log.SetOutput(&sink)
	log.SetFormatter(&logrus.JSONFormatter{})
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{Log: log}, Actors: actors.Config{Log: log}})

	code, _ := rawRequest(t, strings.TrimPrefix(p.URL, "http://"), "GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
	require.Equal(t, http.StatusBadRequest, code)
	var access map[string]any
	require.Eventually(t, func() bool {
		for _, l := range jsonLines(t, sink.Bytes()) {
			if l["msg"] == "request" {
				access = l
				return true
			}
		}
		return false
	}, 2*time.Second, time.Millisecond)
	require.EqualValues(t, http.StatusBadRequest, access["status"])
	require.Equal(t, "too many Host headers", access["error"])
	require.Contains(t, access["remote"], "127.0.0.1:")
	require.Equal(t, "info", access["level"])
}
