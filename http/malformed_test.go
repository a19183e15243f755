package http_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

// The shapes a refusal may take.
const (
	shapeOpenAI = "openai" // SPEC §4's error body, on /v1/*
	shapeDetail = "detail" // {"detail": "..."}, everywhere else
	shapeServer = "server" // net/http refused the bytes before any handler ran: its own 4xx
)

// malformedMaxBody is --max-body for these tests: small enough to exceed cheaply, large enough for a
// very long model name.
const malformedMaxBody = 64 << 10

// malformed is one bad request.
type malformed struct {
	name        string
	method      string // default POST
	path        string // default /v1/chat/completions
	contentType string // default application/json; "-" sends none
	body        string
	chunked     bool     // send the body with Transfer-Encoding: chunked (no Content-Length)
	header      []string // extra header pairs
	raw         string   // when set, written as is on a fresh TCP connection instead
	keyed       bool     // send to the proxy that has --api-keys
	code        int
	shape       string
}

// rawRequest writes raw on a new connection to addr and reads the one answer.
func rawRequest(t *testing.T, addr, raw string) (int, []byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, faultWait)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(faultWait)))
	// The server may answer and close before it read everything (a header over the limit): write
	// from a goroutine and ignore its error, so the answer is still read.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		conn.Write([]byte(raw))
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	conn.Close()
	<-wrote
	return resp.StatusCode, b
}

// send sends one malformed request to base and returns the status and body.
func (m malformed) send(t *testing.T, base string) (int, []byte) {
	t.Helper()
	if m.raw != "" {
		return rawRequest(t, strings.TrimPrefix(base, "http://"), m.raw)
	}
	method, path, ct := m.method, m.path, m.contentType
	if method == "" {
		method = http.MethodPost
	}
	if path == "" {
		path = "/v1/chat/completions"
	}
	if ct == "" {
		ct = "application/json"
	}
	req, err := http.NewRequest(method, base+path, strings.NewReader(m.body))
	require.NoError(t, err)
	if m.chunked {
		req.ContentLength, req.TransferEncoding = -1, []string{"chunked"}
	}
	if ct != "-" {
		req.Header.Set("Content-Type", ct)
	}
	for i := 0; i+1 < len(m.header); i += 2 {
		req.Header.Set(m.header[i], m.header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// malformedCases are bad requests of every kind SPEC §4 names and the protocol allows.
func malformedCases() []malformed {
	good := `{"model":"sim-model"}`
	rawPost := func(headers, body string) string {
		return "POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n" + headers + "\r\n" + body
	}
	return []malformed{
		// The body is not a JSON object.
		{name: "truncated JSON", body: `{"model":"sim-model","messages":[`, code: 400, shape: shapeOpenAI},
		{name: "array root", body: `[` + good + `]`, code: 400, shape: shapeOpenAI},
		{name: "string root", body: `"sim-model"`, code: 400, shape: shapeOpenAI},
		{name: "number root", body: `42`, code: 400, shape: shapeOpenAI},
		{name: "null root", body: `null`, code: 400, shape: shapeOpenAI},
		{name: "boolean root", body: `true`, code: 400, shape: shapeOpenAI},
		{name: "deeply nested arrays", body: strings.Repeat("[", 10000) + strings.Repeat("]", 10000), code: 400, shape: shapeOpenAI},
		{name: "empty body", body: ``, code: 400, shape: shapeOpenAI},
		{name: "whitespace only", body: " \r\n\t ", code: 400, shape: shapeOpenAI},
		{name: "invalid UTF-8 in a string", body: "{\"model\":\"sim-\xff\"}", code: 400, shape: shapeOpenAI},
		{name: "invalid UTF-8 after the object", body: good + "\xc3", code: 400, shape: shapeOpenAI},
		{name: "byte order mark", body: "\xef\xbb\xbf" + good, code: 400, shape: shapeOpenAI},
		{name: "trailing garbage", body: good + ` x`, code: 400, shape: shapeOpenAI},
		{name: "two objects", body: good + good, code: 400, shape: shapeOpenAI},
		{name: "raw control character in a string", body: "{\"model\":\"sim\x01model\"}", code: 400, shape: shapeOpenAI},
		{name: "single quotes", body: `{'model':'sim-model'}`, code: 400, shape: shapeOpenAI},
		// The model field is missing or not a string.
		{name: "no model", body: `{"messages":[]}`, code: 400, shape: shapeOpenAI},
		{name: "null model", body: `{"model":null}`, code: 400, shape: shapeOpenAI},
		{name: "empty model", body: `{"model":""}`, code: 400, shape: shapeOpenAI},
		{name: "number for the model", body: `{"model":7}`, code: 400, shape: shapeOpenAI},
		{name: "huge number for the model", body: `{"model":1e999}`, code: 400, shape: shapeOpenAI},
		{name: "boolean for the model", body: `{"model":false}`, code: 400, shape: shapeOpenAI},
		{name: "nested model", body: `{"model":{"name":"sim-model"}}`, code: 400, shape: shapeOpenAI},
		{name: "model in an array", body: `{"model":["sim-model"]}`, code: 400, shape: shapeOpenAI},
		// The model is a string, but no replica serves it.
		{name: "very long model name", body: `{"model":"` + strings.Repeat("m", 60<<10) + `"}`, code: 404, shape: shapeOpenAI},
		{name: "escaped control characters in the model", body: `{"model":"sim\u0000model\u001b[2J"}`, code: 404, shape: shapeOpenAI},
		{name: "lone surrogate in the model", body: `{"model":"\ud800sim-model"}`, code: 404, shape: shapeOpenAI},
		// Other routing fields of the wrong type.
		{name: "string for stream", body: `{"model":"sim-model","stream":"true"}`, code: 400, shape: shapeOpenAI},
		{name: "number for stream", body: `{"model":"sim-model","stream":1}`, code: 400, shape: shapeOpenAI},
		{name: "n zero", body: `{"model":"sim-model","n":0}`, code: 400, shape: shapeOpenAI},
		{name: "n negative", body: `{"model":"sim-model","n":-2}`, code: 400, shape: shapeOpenAI},
		{name: "string for n", body: `{"model":"sim-model","n":"2"}`, code: 400, shape: shapeOpenAI},
		{name: "n too large for an integer", body: `{"model":"sim-model","n":1e300}`, code: 400, shape: shapeOpenAI},
		// Not JSON by its Content-Type.
		{name: "text/plain", contentType: "text/plain", body: good, code: 415, shape: shapeOpenAI},
		{name: "unparsable Content-Type", contentType: "application/json;;;=", body: good, code: 415, shape: shapeOpenAI},
		{name: "multipart form", contentType: "multipart/form-data; boundary=x", body: "--x--", code: 415, shape: shapeOpenAI},
		{name: "url-encoded form", contentType: "application/x-www-form-urlencoded", body: "model=sim-model", code: 415, shape: shapeOpenAI},
		// Too large.
		{name: "body over --max-body", body: `{"model":"sim-model","x":"` + strings.Repeat("a", malformedMaxBody) + `"}`, code: 413, shape: shapeOpenAI},
		{name: "chunked body over --max-body", chunked: true, body: `{"model":"sim-model","x":"` + strings.Repeat("a", malformedMaxBody) + `"}`, code: 413, shape: shapeOpenAI},
		{name: "declared length over --max-body, body held back", raw: rawPost("Content-Type: application/json\r\nContent-Length: 1000000000\r\nExpect: 100-continue\r\n", ""), code: 413, shape: shapeOpenAI},
		{name: "/nodes/add body over --max-body", path: "/nodes/add", body: `{"url":"` + strings.Repeat("h", malformedMaxBody) + `"}`, code: 413, shape: shapeDetail},
		{name: "/nodes/add chunked body over --max-body", path: "/nodes/add", chunked: true, body: `{"url":"` + strings.Repeat("h", malformedMaxBody) + `"}`, code: 413, shape: shapeDetail},
		{name: "/nodes/remove body over --max-body", path: "/nodes/remove", body: `{"url":"` + strings.Repeat("h", malformedMaxBody) + `"}`, code: 413, shape: shapeDetail},
		// Wrong methods and paths.
		{name: "GET on chat", method: http.MethodGet, contentType: "-", code: 405, shape: shapeOpenAI},
		{name: "PUT on completions", method: http.MethodPut, path: "/v1/completions", body: good, code: 405, shape: shapeOpenAI},
		{name: "POST on /v1/models", path: "/v1/models", body: good, code: 405, shape: shapeOpenAI},
		{name: "DELETE on /nodes/add", method: http.MethodDelete, path: "/nodes/add", contentType: "-", code: 405, shape: shapeDetail},
		{name: "GET on /nodes/remove", method: http.MethodGet, path: "/nodes/remove", contentType: "-", code: 405, shape: shapeDetail},
		{name: "POST on /health", path: "/health", body: `{}`, code: 405, shape: shapeDetail},
		{name: "unknown path", method: http.MethodGet, path: "/v2/models", contentType: "-", code: 404, shape: shapeDetail},
		{name: "unknown admin path", path: "/nodes/nothing", body: `{}`, code: 404, shape: shapeDetail},
		{name: "unknown /v1 path by GET", method: http.MethodGet, path: "/v1/nothing", contentType: "-", code: 405, shape: shapeOpenAI},
		{name: "POST on /v1/ itself", path: "/v1/", body: good, code: 404, shape: shapeOpenAI},
		{name: "OPTIONS that is no preflight", method: http.MethodOptions, contentType: "-", code: 405, shape: shapeOpenAI},
		{name: "other /v1 route without a model", path: "/v1/embeddings", body: `{"input":"x"}`, code: 400, shape: shapeOpenAI},
		// Bad admin requests.
		{name: "/nodes/add not JSON", path: "/nodes/add", body: `url=http://x`, code: 400, shape: shapeDetail},
		{name: "/nodes/add array", path: "/nodes/add", body: `[]`, code: 400, shape: shapeDetail},
		{name: "/nodes/add number for url", path: "/nodes/add", body: `{"url":5}`, code: 400, shape: shapeDetail},
		{name: "/nodes/add url without host", path: "/nodes/add", body: `{"url":"http://"}`, code: 400, shape: shapeDetail},
		{name: "/nodes/add url with spaces", path: "/nodes/add", body: `{"url":"http://a b:1"}`, code: 400, shape: shapeDetail},
		{name: "/nodes/add string for models", path: "/nodes/add", body: `{"url":"http://a:1","status":{"models":"m"}}`, code: 400, shape: shapeDetail},
		{name: "/nodes/add unknown role", path: "/nodes/add", body: `{"url":"http://a:1","status":{"role":"Boss"}}`, code: 400, shape: shapeDetail},
		{name: "/nodes/add as text/plain", path: "/nodes/add", contentType: "text/plain", body: `{"url":"http://a:1"}`, code: 415, shape: shapeDetail},
		{name: "/nodes/remove as a form", path: "/nodes/remove", contentType: "application/x-www-form-urlencoded", body: "url=http://a:1", code: 415, shape: shapeDetail},
		{name: "/nodes/remove without url", path: "/nodes/remove", body: `{}`, code: 400, shape: shapeDetail},
		{name: "/nodes/remove empty body", path: "/nodes/remove", contentType: "-", code: 400, shape: shapeDetail},
		{name: "/nodes/remove bad query escape", path: "/nodes/remove?node_url=%zz", contentType: "-", code: 400, shape: shapeDetail},
		{name: "/nodes/remove query not a URL", path: "/nodes/remove?node_url=ftp://x", contentType: "-", code: 400, shape: shapeDetail},
		{name: "/nodes/terminate without url", path: "/nodes/terminate", body: `{"node":"x"}`, code: 400, shape: shapeDetail},
		// Garbage in Authorization when --api-keys is set.
		{name: "no Authorization", keyed: true, body: good, code: 401, shape: shapeOpenAI},
		{name: "Basic instead of Bearer", keyed: true, body: good, header: []string{"Authorization", "Basic azE6eA=="}, code: 401, shape: shapeOpenAI},
		{name: "Bearer without a key", keyed: true, body: good, header: []string{"Authorization", "Bearer"}, code: 401, shape: shapeOpenAI},
		{name: "Bearer with a key and more", keyed: true, body: good, header: []string{"Authorization", "Bearer k1 k1"}, code: 401, shape: shapeOpenAI},
		{name: "very long key", keyed: true, body: good, header: []string{"Authorization", "Bearer " + strings.Repeat("k", 64<<10)}, code: 401, shape: shapeOpenAI},
		{name: "binary key", keyed: true, raw: rawPost("Content-Type: application/json\r\nContent-Length: 21\r\nAuthorization: Bearer \x80\xff\xfe\r\n", good), code: 401, shape: shapeOpenAI},
		// Protocol violations: net/http answers before any handler runs.
		{name: "headers over the limit", raw: rawPost("X-Big: "+strings.Repeat("b", 2<<20)+"\r\n", ""), code: 431, shape: shapeServer},
		{name: "two different Content-Lengths", raw: rawPost("Content-Length: 21\r\nContent-Length: 5\r\n", good), code: 400, shape: shapeServer},
		{name: "Content-Length not a number", raw: rawPost("Content-Length: twenty\r\n", good), code: 400, shape: shapeServer},
		{name: "garbage request line", raw: "GARBAGE\r\n\r\n", code: 400, shape: shapeServer},
		{name: "invalid method token", raw: "P(S)T /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n\r\n", code: 400, shape: shapeServer},
		{name: "header line without a colon", raw: rawPost("Content-Type application/json\r\n", ""), code: 400, shape: shapeServer},
		{name: "space in a header name", raw: rawPost("Content Type: application/json\r\n", ""), code: 400, shape: shapeServer},
		{name: "HTTP/1.1 without Host", raw: "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 21\r\n\r\n" + good, code: 400, shape: shapeServer},
		{name: "unknown HTTP version", raw: "POST /v1/chat/completions HTTP/9.9\r\nHost: proxy\r\n\r\n", code: 505, shape: shapeServer},
		// The body breaks the chunked encoding: our handler fails to read it.
		{name: "invalid chunk size", raw: rawPost("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", "zz\r\n"+good+"\r\n0\r\n\r\n"), code: 400, shape: shapeOpenAI},
	}
}

// Every kind of malformed request gets a clear refusal in the documented shape, reaches no replica,
// leaves every count at 0, and the proxy serves the next good request.
func TestMalformedRequestsAreRefusedAndLeaveNoTrace(t *testing.T) {
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{Tokens: 2})
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{MaxBody: malformedMaxBody}})
	keyed := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{MaxBody: malformedMaxBody, APIKeys: []string{"k1"}}})
	p.MustAdd(t, rep)
	keyed.MustAdd(t, rep)

	cases := malformedCases()
	require.GreaterOrEqual(t, len(cases), 30)
	served := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			target, auth := p, []string(nil)
			if c.keyed {
				target, auth = keyed, []string{"Authorization", "Bearer k1"}
			}
			refusedSeries := `lmproxy_requests_total{model="",replica="",route="",status="` + strconv.Itoa(c.code) + `"}`
			refusedBefore := scrape(t, target.URL)[refusedSeries]
			code, body := c.send(t, target.URL)
			require.Equal(t, c.code, code, "%s", clip(body))
			switch c.shape {
			case shapeOpenAI:
				requireOpenAIError(t, body, c.code)
				require.Less(t, len(body), 4<<10, "the error does not echo what the client sent: %s", clip(body))
			case shapeDetail:
				detail, ok := decode(t, body)["detail"].(string)
				require.True(t, ok, "a {\"detail\"} body: %s", clip(body))
				require.NotEmpty(t, detail)
				require.Less(t, len(body), 4<<10, "the error does not echo what the client sent: %s", clip(body))
			case shapeServer:
				require.GreaterOrEqual(t, code, 400)
				// Refused before any route saw it, it is still counted, with its status.
				require.Eventually(t, func() bool { return scrape(t, target.URL)[refusedSeries] == refusedBefore+1 },
					faultWait, time.Millisecond, "%s counted once", refusedSeries)
			}

			// The proxy keeps serving, on a new connection and on the same proxy.
			code, _, answer := postJSON(t, target.URL+"/v1/chat/completions", map[string]any{"model": "sim-model"}, auth...)
			require.Equal(t, http.StatusOK, code, string(answer))
			served++
			target.WaitIdle(t, faultWait)
		})
	}
	require.Len(t, rep.Requests("/v1/chat/completions"), served, "no malformed request reached the replica")
	for _, px := range []*proxytest.Proxy{p, keyed} {
		px.WaitIdle(t, faultWait)
		for _, rs := range px.Status(t) {
			require.True(t, rs.Routable, "bad input never counts against a replica: %+v", rs)
			require.Zero(t, rs.Failures)
		}
		m := scrape(t, px.URL)
		require.Zero(t, sum(m, "lmproxy_upstream_errors_total{"))
		require.Zero(t, sum(m, "lmproxy_replica_in_flight{"))
	}
}

// clip shortens a body for a failure message.
func clip(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "…"
	}
	return string(bytes.ToValidUTF8(b, []byte("?")))
}
