package h1_test

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// BenchmarkServeKeepAlive: one keep-alive client posts small JSON requests one after the other and
// reads each answer, against h1 and net/http. The client parses answers by hand, allocating
// nothing, so allocs/op are the server's (plus the handler's).
func BenchmarkServeKeepAlive(b *testing.B) {
	handler := echoJSON()
	servers := []struct {
		name  string
		start func(b *testing.B) *testServer
	}{
		{"h1", func(b *testing.B) *testServer { return startH1(b, &h1.Server{Handler: handler}) }},
		{"net-http", func(b *testing.B) *testServer { return startStd(b, &http.Server{Handler: handler}) }},
	}
	for _, s := range servers {
		b.Run(s.name, func(b *testing.B) {
			roundTrip := echoClient(b, s.start(b).addr)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				roundTrip()
			}
		})
	}
}

// echoJSON returns a handler that answers a request with its (small) body, as JSON.
func echoJSON() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var buf [512]byte
		n, _ := io.ReadFull(r.Body, buf[:min(r.ContentLength, int64(len(buf)))])
		w.Header().Set("Content-Type", "application/json")
		w.Write(buf[:n])
	})
}

// echoClient connects to an echoJSON server at addr and returns a function that posts a small
// JSON request on the connection and reads its answer, allocating nothing.
func echoClient(t testing.TB, addr string) (roundTrip func()) {
	body := `{"model":"m","messages":[{"role":"user","content":"hello"}]}`
	req := []byte("POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n" +
		"Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(time.Hour))
	br := bufio.NewReaderSize(nc, 4<<10)
	return func() {
		if _, err := nc.Write(req); err != nil {
			t.Fatal(err)
		}
		if n := readAnswer(t, br); n != len(body) {
			t.Fatalf("answer of %d bytes, want %d", n, len(body))
		}
	}
}

// readAnswer reads an answer framed by Content-Length and returns its body's length.
func readAnswer(b testing.TB, br *bufio.Reader) int {
	n := -1
	for first := true; ; first = false {
		line, err := br.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		if first {
			if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
				b.Fatalf("answer %q", line)
			}
			continue
		}
		if len(line) <= 2 {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && string(k) == "Content-Length" {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
	if n < 0 {
		b.Fatal("answer without Content-Length")
	}
	if _, err := br.Discard(n); err != nil {
		b.Fatal(err)
	}
	return n
}
