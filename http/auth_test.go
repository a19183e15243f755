package http_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

func TestAPIKeysGuardV1(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{APIKeys: []string{"k1", "k2"}}}, 1, proxytest.ReplicaConfig{})
	url := p.URL + "/v1/chat/completions"
	body := map[string]any{"model": "sim-model"}

	code, _, b := postJSON(t, url, body)
	require.Equal(t, http.StatusUnauthorized, code)
	requireOpenAIError(t, b, 401)
	code, _, b = postJSON(t, url, body, "Authorization", "Bearer wrong")
	require.Equal(t, http.StatusUnauthorized, code)
	requireOpenAIError(t, b, 401)
	code, _, _ = postJSON(t, url, body, "Authorization", "Bearer k2")
	require.Equal(t, http.StatusOK, code)
	for _, scheme := range []string{"bearer", "BEARER"} {
		code, _, _ = postJSON(t, url, body, "Authorization", scheme+" k1")
		require.Equal(t, http.StatusOK, code, "the scheme is matched in any case, as LMDeploy's proxy matches it")
	}
	code, _, _ = postJSON(t, url, body, "Authorization", "Bearer K1")
	require.Equal(t, http.StatusUnauthorized, code, "the key is matched exactly")
	code, _, _ = do(t, http.MethodGet, p.URL+"/v1/models", "", nil)
	require.Equal(t, http.StatusUnauthorized, code)

	// Outside /v1/ stays open without --admin-keys.
	code, _, _ = do(t, http.MethodGet, p.URL+"/nodes/status", "", nil)
	require.Equal(t, http.StatusOK, code)
	// CORS preflight is never refused.
	code, h, _ := do(t, http.MethodOptions, url, "", nil, "Origin", "http://app.example", "Access-Control-Request-Method", "POST")
	require.Equal(t, http.StatusNoContent, code)
	require.Equal(t, "*", h.Get("Access-Control-Allow-Origin"))
	require.Equal(t, "Authorization, Content-Type, X-Request-Id", h.Get("Access-Control-Allow-Headers"))
}

// OpenAI's JavaScript SDK sends headers of its own (x-stainless-*, openai-beta): a browser only
// sends the request if the preflight allows every header it asked for.
func TestPreflightAllowsTheHeadersTheBrowserAsksFor(t *testing.T) {
	p, _ := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{APIKeys: []string{"k1"}}}, 1, proxytest.ReplicaConfig{})
	asked := "authorization, content-type, x-stainless-os, openai-beta"
	code, h, _ := do(t, http.MethodOptions, p.URL+"/v1/chat/completions", "", nil,
		"Origin", "http://app.example", "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", asked)
	require.Equal(t, http.StatusNoContent, code)
	require.Equal(t, asked, h.Get("Access-Control-Allow-Headers"))
	require.Empty(t, h.Get("Access-Control-Allow-Credentials"), "all origins, so never with credentials")
}

func TestAdminKeysGuardNodesAndDistServe(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{AdminKeys: []string{"adm"}}})
	code, _, b := do(t, http.MethodGet, p.URL+"/nodes/status", "", nil)
	require.Equal(t, http.StatusUnauthorized, code)
	require.NotEmpty(t, decode(t, b)["detail"])
	code, _, _ = do(t, http.MethodPost, p.URL+"/distserve/gc", "", nil)
	require.Equal(t, http.StatusUnauthorized, code)
	code, _, _ = do(t, http.MethodGet, p.URL+"/nodes/status", "", nil, "Authorization", "Bearer adm")
	require.Equal(t, http.StatusOK, code)
	code, _, _ = do(t, http.MethodGet, p.URL+"/health", "", nil)
	require.Equal(t, http.StatusOK, code, "the proxy's own health stays open")
	code, _, _ = do(t, http.MethodGet, p.URL+"/v1/models", "", nil)
	require.Equal(t, http.StatusOK, code, "admin keys do not guard /v1/")
}
