package h1_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// bothServers runs f against h1's server and net/http's, each serving h.
func bothServers(t *testing.T, h http.Handler, f func(t *testing.T, ts *testServer)) {
	t.Run("h1", func(t *testing.T) { f(t, startH1(t, &h1.Server{Handler: h})) })
	t.Run("net/http", func(t *testing.T) { f(t, startStd(t, &http.Server{Handler: h})) })
}

// send sends v on ch, failing the test if nobody takes it within waitLimit.
func send[T any](t testing.TB, ch chan<- T, v T, what string) {
	t.Helper()
	select {
	case ch <- v:
	case <-time.After(waitLimit):
		t.Fatalf("timed out handing over %s", what)
	}
}

// TestStreamFlushesEachEvent streams server-sent events: the handler writes the next event only
// when the client got the previous one, so the client can only go on if each Flush put its event
// on the wire. The answer is chunked and ends with a clean last chunk, and the connection carries
// another request afterwards.
func TestStreamFlushesEachEvent(t *testing.T) {
	const events = 5
	next := make(chan struct{})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" {
			io.WriteString(w, "probe")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := range events {
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
			fmt.Fprintf(w, "data: {\"i\":%d}\n\n", i)
			if err := rc.Flush(); err != nil {
				t.Errorf("Flush: %v", err)
				return
			}
		}
	})
	bothServers(t, handler, func(t *testing.T, ts *testServer) {
		rc := dialRaw(t, ts.addr)
		var wire bytes.Buffer
		rc.br = bufio.NewReader(io.TeeReader(rc.nc, &wire))
		rc.write("GET /events HTTP/1.1\r\nHost: h\r\n\r\n")
		send(t, next, struct{}{}, "event 0")
		resp, err := http.ReadResponse(rc.br, nil)
		if err != nil {
			t.Fatalf("reading the answer's head: %v", err)
		}
		if resp.StatusCode != 200 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
			t.Fatalf("answer %d, Transfer-Encoding %q: want 200 chunked", resp.StatusCode, resp.TransferEncoding)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Errorf("Content-Type %q", ct)
		}
		for i := range events {
			if i > 0 {
				send(t, next, struct{}{}, fmt.Sprintf("event %d", i))
			}
			want := fmt.Sprintf("data: {\"i\":%d}\n\n", i)
			got := make([]byte, len(want))
			if _, err := io.ReadFull(resp.Body, got); err != nil {
				t.Fatalf("reading event %d: %v", i, err)
			}
			if string(got) != want {
				t.Fatalf("event %d: %q, want %q", i, got, want)
			}
		}
		rest, err := io.ReadAll(resp.Body)
		if err != nil || len(rest) != 0 {
			t.Fatalf("after the last event: %q, %v; want a clean end", rest, err)
		}
		var chunks strings.Builder
		for i := range events {
			ev := fmt.Sprintf("data: {\"i\":%d}\n\n", i)
			fmt.Fprintf(&chunks, "%x\r\n%s\r\n", len(ev), ev)
		}
		if !strings.HasSuffix(wire.String(), "\r\n\r\n"+chunks.String()+"0\r\n\r\n") {
			t.Errorf("the events are not one chunk each after the head, then the last chunk: %q", wire.String())
		}
		if _, body := rc.get("/probe"); body != "probe" {
			t.Errorf("the connection does not carry another request: %q", body)
		}
	})
}

// TestStreamWithNetHTTPClient reads a flushed stream with net/http's client, as an SDK does: each
// event arrives before the next is written.
func TestStreamWithNetHTTPClient(t *testing.T) {
	next := make(chan struct{})
	h := startH1(t, &h1.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
		}
		io.WriteString(w, "data: [DONE]\n\n")
	})})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: waitLimit}
	go func() {
		// The answer's head leaves with the first event.
		select {
		case next <- struct{}{}:
		case <-time.After(waitLimit):
		}
	}()
	resp, err := client.Get("http://" + h.addr + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var got []string
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			got = append(got, line)
			if n := len(got); n < 3 {
				send(t, next, struct{}{}, fmt.Sprintf("event %d", n))
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"data: 0", "data: 1", "data: 2", "data: [DONE]"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q", got, want)
	}
}
