package http_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
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
// line: status, the reason, the client's address and how long its head took, which is all there is
// to find a broken or slow client. The duration counts in the metrics too.
func TestRefusedHeadHasAnAccessLine(t *testing.T) {
	var sink syncBuffer
	log := logrus.New()
	log.SetOutput(&sink)
	log.SetFormatter(&logrus.JSONFormatter{})
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{Log: log}, Actors: actors.Config{Log: log}})
	addr := strings.TrimPrefix(p.URL, "http://")
	refusedLines := func(n int) []map[string]any {
		var lines []map[string]any
		require.Eventually(t, func() bool {
			lines = nil
			for _, l := range jsonLines(t, sink.Bytes()) {
				if l["msg"] == "request" {
					lines = append(lines, l)
				}
			}
			return len(lines) >= n
		}, 2*time.Second, time.Millisecond)
		return lines
	}

	code, _ := rawRequest(t, addr, "GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
	require.Equal(t, http.StatusBadRequest, code)
	access := refusedLines(1)[0]
	require.EqualValues(t, http.StatusBadRequest, access["status"])
	require.Equal(t, "too many Host headers", access["error"])
	require.Contains(t, access["remote"], "127.0.0.1:")
	require.Equal(t, "info", access["level"])
	require.Less(t, access["duration_ms"], 100.0, "a head that came whole is refused at once")

	// A head that arrives in two parts, the second a known time after the first: its refusal's
	// duration is at least that long.
	const pause = 150 * time.Millisecond
	conn, err := net.DialTimeout("tcp", addr, faultWait)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(faultWait)))
	_, err = conn.Write([]byte("GET /v1/models HTTP/1.1\r\nHost: a\r\n"))
	require.NoError(t, err)
	time.Sleep(pause)
	_, err = conn.Write([]byte("Host: b\r\n\r\n"))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	access = refusedLines(2)[1]
	require.Equal(t, "too many Host headers", access["error"])
	require.GreaterOrEqual(t, access["duration_ms"], float64(pause.Milliseconds()), "the head's time is its refusal's duration")

	// Both refusals are in the duration histogram, the slow one above the pause.
	m := scrape(t, p.URL)
	require.EqualValues(t, 2, m[`lmproxy_request_duration_seconds_count{model="",route=""}`])
	require.GreaterOrEqual(t, m[`lmproxy_request_duration_seconds_sum{model="",route=""}`], pause.Seconds())
}
