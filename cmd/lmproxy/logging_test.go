package main

import (
	"encoding/json"
	"log/slog"
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

// hollywood logs through slog.Default: with --log-level DEBUG its lines reach the command's log.
func TestServeLogsHollywoodInItsFormat(t *testing.T) {
	s, _ := startServe(t, "--log-level", "debug")
	line := s.stderr.waitFor(t, "Actor started")
	require.Contains(t, line, `"level":"debug"`)
}
