package http_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/lmproxy/lmproxy/proxytest"
)

// BenchmarkNonStreamRequest measures one whole small non-stream request — acquire, forward, copy the
// answer, release — against the same request sent directly to the replica. The difference is the
// proxy's overhead per request.
func BenchmarkNonStreamRequest(b *testing.B) {
	answer := []byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}]}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answerProbes(w, r, "m") {
			return
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(answer)
	}))
	defer up.Close()
	p := proxytest.StartProxy(b, proxytest.ProxyConfig{})
	code, body := p.Post(b, "/nodes/add", map[string]any{"url": up.URL})
	if code != http.StatusOK {
		b.Fatalf("add: %d %s", code, body)
	}
	req := []byte(`{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":16}`)

	run := func(b *testing.B, url string) {
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				resp, err := client.Post(url, "application/json", bytes.NewReader(req))
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		})
	}
	b.Run("direct", func(b *testing.B) { run(b, up.URL+"/v1/chat/completions") })
	b.Run("proxy", func(b *testing.B) { run(b, p.URL+"/v1/chat/completions") })
}
