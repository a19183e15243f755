package http_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

// openaiNPMVersion is the openai npm package the Node.js client test runs. It is pinned so that a new
// release changes nothing until the pin moves, and it names the cache directory, so moving it
// installs afresh. Version 5 has no dependencies and supports Node.js 18 and later.
const openaiNPMVersion = "5.23.2"

// The official OpenAI Node.js SDK streams a chat through the proxy as it would from any OpenAI
// server: every chunk arrives, the usage chunk included, and the API key is accepted.
func TestOpenAINodeClientStreamsAChat(t *testing.T) {
	node, errNode := exec.LookPath("node")
	npm, errNPM := exec.LookPath("npm")
	if errNode != nil || errNPM != nil {
		t.Skip("node/npm not found: skipping the openai npm client test")
	}
	dir := installOpenAINPM(t, npm)
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{APIKeys: []string{"sk-node"}}},
		2, proxytest.ReplicaConfig{Tokens: 6})

	// ESM resolves "openai" from the script's own directory upwards (NODE_PATH does not apply to
	// it), so the script runs from a copy beside the installed node_modules.
	runDir, err := os.MkdirTemp(dir, "run-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(runDir) })
	script, err := os.ReadFile(filepath.Join("testdata", "node", "stream_chat.mjs"))
	require.NoError(t, err)
	scriptPath := filepath.Join(runDir, "stream_chat.mjs")
	require.NoError(t, os.WriteFile(scriptPath, script, 0o644))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, scriptPath)
	cmd.Env = append(os.Environ(), "LMPROXY_BASE_URL="+p.URL+"/v1", "LMPROXY_API_KEY=sk-node", "LMPROXY_MODEL=sim-model")
	cmd.WaitDelay = 5 * time.Second // do not wait for the output pipes of a killed node forever
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "node %s: %s", scriptPath, stderr.String())

	var got struct {
		Content          string `json:"content"`
		Chunks           int    `json:"chunks"`
		CompletionTokens int    `json:"completion_tokens"`
	}
	require.NoError(t, json.Unmarshal(out, &got), "node printed %q", out)
	require.Equal(t, "tok tok tok tok tok tok", got.Content)
	require.Equal(t, 7, got.Chunks, "six token chunks and the usage chunk")
	require.Equal(t, 6, got.CompletionTokens)
	p.WaitIdle(t, 2*time.Second)
}

// installOpenAINPM returns a directory whose node_modules holds the pinned openai package, kept in
// the user's cache directory so that later runs do not reach the registry. The package is installed
// into a temporary directory beside it and renamed into place: a run cut short leaves no half
// installation behind, and two runs at once do not write into the same tree.
func installOpenAINPM(t *testing.T, npm string) string {
	t.Helper()
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	root := filepath.Join(base, "lmproxy-test", "node")
	dir := filepath.Join(root, "openai-"+openaiNPMVersion)
	installed := filepath.Join(dir, "node_modules", "openai", "package.json")
	if _, err := os.Stat(installed); err == nil {
		return dir
	}
	require.NoError(t, os.MkdirAll(root, 0o755))
	tmp, err := os.MkdirTemp(root, "install-")
	require.NoError(t, err)
	defer os.RemoveAll(tmp) // nothing is left there once the rename succeeded
	// A package.json of its own keeps npm from installing into a project further up the tree.
	require.NoError(t, os.WriteFile(filepath.Join(tmp, "package.json"), []byte("{\"private\": true}\n"), 0o644))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund", "--no-update-notifier",
		"--loglevel=error", "openai@"+openaiNPMVersion)
	cmd.Dir = tmp
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "npm install openai@%s: %s", openaiNPMVersion, out)
	if err := os.Rename(tmp, dir); err != nil {
		// Another run may have installed it first; then use that one.
		_, statErr := os.Stat(installed)
		require.NoError(t, statErr, "cannot move the installation into %s: %v", dir, err)
	}
	return dir
}
