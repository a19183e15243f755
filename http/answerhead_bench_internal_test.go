package http

import (
	"bufio"
	"strings"
	"testing"
)

// BenchmarkReadAnswerHead measures reading a replica's answer head: a whole JSON answer's (parsed in
// place) and an event stream's (chunked, left to net/http), as uvicorn writes them.
func BenchmarkReadAnswerHead(b *testing.B) {
	for _, c := range []struct{ name, head string }{
		{"whole", "HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 13:08:52 GMT\r\nserver: uvicorn\r\ncontent-length: 312\r\ncontent-type: application/json\r\n\r\n"},
		{"stream", "HTTP/1.1 200 OK\r\ndate: Sun, 06 Dec 2026 13:08:52 GMT\r\nserver: uvicorn\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"},
	} {
		b.Run(c.name, func(b *testing.B) {
			sr := strings.NewReader(c.head)
			br := bufio.NewReaderSize(sr, 2<<10)
			b.ReportAllocs()
			for b.Loop() {
				sr.Reset(c.head)
				br.Reset(sr)
				resp, _, err := readAnswerHead(br, "POST", false)
				if err != nil || resp.StatusCode != 200 {
					b.Fatal(resp, err)
				}
			}
		})
	}
}
