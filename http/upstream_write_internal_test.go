package http

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// writeRequest's output is a request net/http reads back whole: method, target, Host, every header
// value, the body with its length; the framing and Expect headers are its own, and a line break in
// a value cannot start a header of its own.
func TestWriteRequestIsReadBackWhole(t *testing.T) {
	body := `{"model":"m","stream":true}`
	req, err := http.NewRequest(http.MethodPost, "http://replica:8000/v1/chat/completions?x=1", strings.NewReader(body))
	require.NoError(t, err)
	req.Header["X-Request-Id"] = []string{"abc"}
	req.Header["X-Forwarded-For"] = []string{"10.0.0.1, 10.0.0.2"}
	req.Header["Accept"] = []string{"text/event-stream", "application/json"}
	req.Header["X-Evil"] = []string{"a\r\nInjected: yes"}
	req.Header["Expect"] = []string{"100-continue"}
	req.Header["Content-Length"] = []string{"1"}
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	require.NoError(t, writeRequest(bw, req))
	require.NoError(t, bw.Flush())

	got, err := http.ReadRequest(bufio.NewReader(&out))
	require.NoError(t, err, out.String())
	require.Equal(t, http.MethodPost, got.Method)
	require.Equal(t, "/v1/chat/completions?x=1", got.RequestURI)
	require.Equal(t, "replica:8000", got.Host)
	require.Equal(t, "abc", got.Header.Get("X-Request-Id"))
	require.Equal(t, "10.0.0.1, 10.0.0.2", got.Header.Get("X-Forwarded-For"))
	require.Equal(t, []string{"text/event-stream", "application/json"}, got.Header["Accept"])
	require.Empty(t, got.Header.Get("Injected"))
	require.Empty(t, got.Header.Get("Expect"))
	require.EqualValues(t, len(body), got.ContentLength)
	b, err := io.ReadAll(got.Body)
	require.NoError(t, err)
	require.Equal(t, body, string(b))
}
