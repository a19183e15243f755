package http

import "testing"

// BenchmarkParseFields measures reading model, stream and n from a chat request body without
// decoding it: the only work the proxy does on a body.
func BenchmarkParseFields(b *testing.B) {
	body := []byte(`{"model":"internlm2-chat-7b","messages":[{"role":"system","content":"You are a helpful assistant."},` +
		`{"role":"user","content":"Write a haiku about load balancers, then explain it in two sentences."}],` +
		`"stream":true,"max_tokens":256,"temperature":0.7,"top_p":0.95,"n":1}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := parseFields(body); err != nil {
			b.Fatal(err)
		}
	}
}
