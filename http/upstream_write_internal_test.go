package http

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// writeRequest's output is a request net/http reads back whole: method, the replica URL's path
// before the client's target, Host, the client's headers less hop-by-hop ones (those its Connection
// header names too) and less those the proxy sets or drops, the proxy's headers, the body with its
// length. The framing and Expect headers are its own, and a line break in a value cannot start a
// header of its own.
func TestWriteRequestIsReadBackWhole(t *testing.T) {
	body := `{"model":"m","stream":true}`
	client, err := http.NewRequest(http.MethodPost, "http://proxy/v1/chat/completions?x=1", nil)
	require.NoError(t, err)
	client.Header = http.Header{
		"X-Request-Id":    {"client-id"},
		"Accept":          {"text/event-stream", "application/json"},
		"Accept-Encoding": {"gzip"},
		"X-Evil":          {"a\r\nInjected: yes"},
		"Expect":          {"100-continue"},
		"Content-Length":  {"1"},
		"Host":            {"proxy"},
		"Connection":      {"keep-alive, X-Hop"},
		"X-Hop":           {"1"},
		"Keep-Alive":      {"timeout=5"},
		"Te":              {"trailers"},
		"Upgrade":         {"h2c"},
	}
	dst, err := parseTarget("http://replica:8000/base")
	require.NoError(t, err)
	req := &replicaRequest{method: http.MethodPost, uri: client.URL.RequestURI(), client: client,
		set: []header{{"X-Request-Id", "abc"}, {"X-Forwarded-For", "10.0.0.1, 10.0.0.2"}}, drop: "Accept-Encoding", body: []byte(body)}
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	writeRequest(bw, dst, req)
	require.NoError(t, bw.Flush())

	got, err := http.ReadRequest(bufio.NewReader(&out))
	require.NoError(t, err, out.String())
	require.Equal(t, http.MethodPost, got.Method)
	require.Equal(t, "/base/v1/chat/completions?x=1", got.RequestURI)
	require.Equal(t, "replica:8000", got.Host)
	require.Equal(t, []string{"abc"}, got.Header["X-Request-Id"])
	require.Equal(t, "10.0.0.1, 10.0.0.2", got.Header.Get("X-Forwarded-For"))
	require.Equal(t, []string{"text/event-stream", "application/json"}, got.Header["Accept"])
	require.Equal(t, "a  Injected: yes", got.Header.Get("X-Evil"))
	for _, h := range []string{"Injected", "Expect", "Accept-Encoding", "Connection", "X-Hop", "Keep-Alive", "Te", "Upgrade"} {
		require.Empty(t, got.Header.Get(h), h)
	}
	require.EqualValues(t, len(body), got.ContentLength)
	b, err := io.ReadAll(got.Body)
	require.NoError(t, err)
	require.Equal(t, body, string(b))
}

// parseTarget splits a replica's URL into the pool's key, the Host header, the TLS name and the
// path prefix; the plain scheme://host:port form without url.Parse, the others with it.
func TestParseTarget(t *testing.T) {
	for _, c := range []struct {
		raw  string
		want target
	}{
		{"http://10.0.0.1:23333", target{key: "http://10.0.0.1:23333", host: "10.0.0.1:23333", hostname: "10.0.0.1"}},
		{"https://replica.example", target{key: "https://replica.example", host: "replica.example", hostname: "replica.example", tls: true}},
		{"http://[::1]:8000", target{key: "http://[::1]:8000", host: "[::1]:8000", hostname: "::1"}},
		{"http://[::1]", target{key: "http://[::1]", host: "[::1]", hostname: "::1"}},
		{"http://replica:8000/v2/base", target{key: "http://replica:8000", host: "replica:8000", hostname: "replica", prefix: "/v2/base"}},
		{"http://user:pw@replica:8000", target{key: "http://replica:8000", host: "replica:8000", hostname: "replica"}},
	} {
		got, err := parseTarget(c.raw)
		require.NoError(t, err, c.raw)
		require.Equal(t, c.want, got, c.raw)
	}
	for _, raw := range []string{"", "replica:8000", "ftp://replica", "http://", "http://%zz"} {
		_, err := parseTarget(raw)
		require.Error(t, err, raw)
	}
}
