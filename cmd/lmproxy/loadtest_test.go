package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/actors/routing"
	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

// loadtest runs `lmproxy loadtest` in-process with --json and returns its exit status and report.
func loadtest(t *testing.T, args ...string) (int, loadReport) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := runLoadtest(context.Background(), append([]string{"--json"}, args...), &stdout, &stderr)
	require.Empty(t, stderr.String(), "stderr is not a terminal: no progress bar, and nothing else to say")
	var rep loadReport
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &rep), "stdout: %q", stdout.String())
	require.Equal(t, 1, bytes.Count(stdout.Bytes(), []byte("\n")), "one JSON line: %q", stdout.String())
	return code, rep
}

func TestLoadtestThroughProxyCountsEveryRequestOK(t *testing.T) {
	const tokens = 8
	for _, tc := range []struct {
		name     string
		args     []string
		requests int // 0: bounded by time
	}{
		{"non-stream by count", []string{"--requests", "50", "--model", "sim-model"}, 50},
		{"stream by count, completions", []string{"--requests", "50", "--stream", "--api", "completions"}, 50},
		{"stream for 1s", []string{"--duration", "1s", "--stream", "--model", "sim-model"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{Tokens: tokens, MaxRecorded: 10})
			code, rep := loadtest(t, append([]string{"--url", p.URL, "--concurrency", "4", "--tokens", "16"}, tc.args...)...)
			require.Equal(t, 0, code, "%+v", rep)
			require.Equal(t, "sim-model", rep.Model, "--model, or else the first of /v1/models")
			require.Zero(t, rep.Errors, "%+v", rep)
			require.Empty(t, rep.ErrorsByKind)
			require.Equal(t, rep.OK, rep.Requests)
			if tc.requests > 0 {
				require.Equal(t, tc.requests, rep.Requests)
			} else {
				require.Positive(t, rep.Requests)
			}
			require.Positive(t, rep.RequestsPerS)
			require.Positive(t, rep.LatencyMs.P50)
			require.LessOrEqual(t, rep.LatencyMs.P50, rep.LatencyMs.P99)
			require.LessOrEqual(t, rep.TTFTMs.P50, rep.LatencyMs.P50)
			if rep.Stream {
				// One event per token, none dropped or merged by the proxy.
				require.Equal(t, tokens*rep.OK, rep.Events)
				require.Positive(t, rep.EventsPerS)
			} else {
				require.Zero(t, rep.Events)
			}
			p.WaitIdle(t, 5*time.Second)
		})
	}
}

func TestLoadtestDurationBoundsTheRun(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 2, proxytest.ReplicaConfig{Tokens: 4, MaxRecorded: 10})
	start := time.Now()
	code, rep := loadtest(t, "--url", p.URL, "--duration", "1s", "--concurrency", "2", "--model", "sim-model")
	require.Equal(t, 0, code)
	require.InDelta(t, 1, rep.ElapsedS, 0.5)
	require.Less(t, time.Since(start), 3*time.Second)
	require.Positive(t, rep.OK)
}

func TestLoadtestCountsErrorsByKind(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  proxytest.Fault
		args   []string
		kind   string
		someOK bool // the fault is on one of two replicas: the other answers
	}{
		{"status from one replica", proxytest.Fault{Status: 500}, nil, "http_500", true},
		{"status from one replica, stream", proxytest.Fault{Status: 500}, []string{"--stream"}, "http_500", true},
		{"replica cut mid-stream", proxytest.Fault{CutAfter: 3}, []string{"--stream"}, kindStreamError, true},
		{"replica hangs", proxytest.Fault{Hang: true}, []string{"--timeout", "200ms"}, kindTimeout, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Random routing, so the faulty replica keeps getting requests however it fares.
			cfg := proxytest.ProxyConfig{Actors: actors.Config{Strategy: routing.NewRandom(nil)}}
			p, reps := proxytest.StartCluster(t, cfg, 2, proxytest.ReplicaConfig{Tokens: 8, MaxRecorded: 10})
			reps[0].SetFault(tc.fault)
			code, rep := loadtest(t, append([]string{"--url", p.URL, "--requests", "40", "--concurrency", "4", "--model", "sim-model"}, tc.args...)...)
			require.Equal(t, 1, code, "an error makes the exit status 1")
			require.Equal(t, 40, rep.Requests, "%+v", rep)
			require.Equal(t, rep.OK+rep.Errors, rep.Requests)
			require.Positive(t, rep.Errors, "%+v", rep)
			require.Equal(t, map[string]int{tc.kind: rep.Errors}, rep.ErrorsByKind, "%+v", rep)
			require.NotEmpty(t, rep.ErrorSamples)
			if tc.someOK {
				require.Positive(t, rep.OK, "%+v", rep)
			}
			p.WaitIdle(t, 5*time.Second)
		})
	}
}

func TestLoadtestConnectErrors(t *testing.T) {
	code, rep := loadtest(t, "--url", proxytest.DeadAddr(t), "--requests", "3", "--model", "m")
	require.Equal(t, 1, code)
	require.Equal(t, map[string]int{kindConnect: 3}, rep.ErrorsByKind)
	require.Zero(t, rep.OK)
}

// A stream that ends cleanly but without data: [DONE] is incomplete, as is one that breaks.
func TestLoadtestShortStreams(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(w http.ResponseWriter)
	}{
		{"clean end without [DONE]", func(w http.ResponseWriter) {
			io.WriteString(w, "data: {\"choices\":[]}\n\n")
		}},
		{"broken connection", func(w http.ResponseWriter) {
			io.WriteString(w, "data: {\"choices\":[]}\n\n")
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "text/event-stream")
				tc.write(w)
			}))
			defer up.Close()
			code, rep := loadtest(t, "--url", up.URL, "--requests", "5", "--stream", "--model", "m")
			require.Equal(t, 1, code)
			require.Equal(t, map[string]int{kindShortStream: 5}, rep.ErrorsByKind)
		})
	}
}

func TestLoadtestTableAndAPIKey(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{APIKeys: []string{"k"}}}, 1, proxytest.ReplicaConfig{Tokens: 4, MaxRecorded: 10})
	var stdout, stderr bytes.Buffer
	code := runLoadtest(context.Background(), []string{"--url", p.URL, "--requests", "5", "--stream", "--api-key", "k"}, &stdout, &stderr)
	require.Equal(t, 0, code, stdout.String())
	for _, want := range []string{"requests", "ok", "requests/s", "SSE events/s", "p50", "p90", "p99", "latency", "time to first token"} {
		require.Contains(t, stdout.String(), want)
	}
	require.NotContains(t, stdout.String(), "errors by kind")

	stdout.Reset()
	code = runLoadtest(context.Background(), []string{"--url", p.URL, "--requests", "2", "--model", "sim-model", "--api-key", "wrong"}, &stdout, &stderr)
	require.Equal(t, 1, code)
	require.Contains(t, stdout.String(), "errors by kind")
	require.Contains(t, stdout.String(), "http 401")
	t.Log("\n" + stdout.String())
}

func TestLoadtestBadFlagsExit2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--url", "localhost:8000"},
		{"--url", "http://127.0.0.1:1", "--api", "embeddings"},
		{"--url", "http://127.0.0.1:1", "--concurrency", "0"},
		{"--url", "http://127.0.0.1:1", "--timeout", "0s"},
	} {
		var stdout, stderr bytes.Buffer
		require.Equal(t, 2, runLoadtest(context.Background(), args, &stdout, &stderr), "%v", args)
		requireOneLine(t, stderr.String(), "lmproxy loadtest: ")
	}
}
