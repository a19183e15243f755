package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSlogGoesThroughLogrusAtItsLevel(t *testing.T) {
	var buf syncBuffer
	restore := routeSlog(logOptions{level: "INFO", format: "json"}.logger(&buf))
	slog.Debug("hidden")
	slog.With("pid", "registry").WithGroup("g").Warn("restarted", "n", 2)
	restore()
	slog.Info("after restore")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 1, buf.String())
	var entry map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &entry))
	require.Equal(t, "warning", entry["level"])
	require.Equal(t, "restarted", entry["msg"])
	require.Equal(t, "registry", entry["pid"])
	require.EqualValues(t, 2, entry["g.n"])
}

// hollywood logs through slog.Default: with --log-level DEBUG (or NOTSET, Python's "everything")
// its lines reach the command's log.
func TestServeLogsHollywoodInItsFormat(t *testing.T) {
	for _, level := range []string{"debug", "notset"} {
		s, _ := startServe(t, "--log-level", level)
		line := s.stderr.waitFor(t, "Actor started")
		require.Contains(t, line, `"level":"debug"`, level)
		require.Equal(t, 0, s.stop(t))
	}
}

// LMDeploy's --log-level takes Python's names, and users switching from it pass them.
func TestLogLevelTakesLMDeploysWords(t *testing.T) {
	for in, want := range map[string]string{"WARN": "WARNING", "critical": "ERROR", "Fatal": "ERROR", "NOTSET": "DEBUG"} {
		require.Equal(t, want, parseServe(t, "--log-level", in).log.level, in)
	}
}

// CRITICAL and FATAL are above anything the proxy logs: its errors still show.
func TestServeLogLevelCriticalKeepsErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	for _, level := range []string{"CRITICAL", "fatal"} {
		var stdout, stderr bytes.Buffer
		args := []string{"--host", "127.0.0.1", "--port", port, "--log-level", level}
		require.Equal(t, 1, runServe(context.Background(), args, &stdout, &stderr), stderr.String())
		requireOneLine(t, stderr.String(), "cannot listen")
	}
}
