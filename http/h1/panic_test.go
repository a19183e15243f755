package h1_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// panicHandler panics on /panic (before writing), /abort (with http.ErrAbortHandler) and
// /panic-after-flush (in the middle of a stream), and answers anything else.
var panicHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/panic":
		panic("boom before writing")
	case "/abort":
		panic(http.ErrAbortHandler)
	case "/panic-after-flush":
		io.WriteString(w, "data: 0\n\n")
		w.(http.Flusher).Flush()
		panic("boom mid-stream")
	}
	io.WriteString(w, "ok")
})

// TestPanic: a handler's panic closes its connection without an answer (or cuts a started answer
// short of its last chunk), as net/http does; it is logged to ErrorLog with its stack, except
// http.ErrAbortHandler; the server goes on serving.
func TestPanic(t *testing.T) {
	cases := []struct {
		path   string
		logged string // what the log has, "" for nothing
	}{
		{"/panic", "boom before writing"},
		{"/abort", ""},
		{"/panic-after-flush", "boom mid-stream"},
	}
	for _, c := range cases {
		t.Run(strings.TrimPrefix(c.path, "/"), func(t *testing.T) {
			bothServers(t, panicHandler, func(t *testing.T, ts *testServer) {
				rc := dialRaw(t, ts.addr)
				rc.write("GET " + c.path + " HTTP/1.1\r\nHost: h\r\n\r\n")
				resp, body, err := rc.read("GET")
				if c.path == "/panic-after-flush" {
					if resp == nil || body != "data: 0\n\n" || err == nil {
						t.Fatalf("a stream cut by a panic: %v %q %v; want its first event, then an error", resp, body, err)
					}
				} else if !isClosedErr(err) {
					t.Fatalf("a panicking handler's client got %v %v, want the connection closed", resp, err)
				}
				if !rc.waitClosed(waitLimit) {
					t.Fatal("the connection stays open after a panic")
				}
				// The log is written before the connection closes.
				log := ts.log.String()
				if c.logged == "" && log != "" {
					t.Errorf("logged %q", log)
				}
				if c.logged != "" && (!strings.Contains(log, c.logged) || !strings.Contains(log, "panic_test.go")) {
					t.Errorf("the log %q lacks the panic %q and its stack", log, c.logged)
				}
				if _, body := dialRaw(t, ts.addr).get("/"); body != "ok" {
					t.Fatalf("after a panic: %q", body)
				}
			})
		})
	}
}
