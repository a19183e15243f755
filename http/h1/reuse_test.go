package h1_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/http/h1"
)

// TestAnswerHeaderNotCarriedOver: a keep-alive connection reuses its last answer's header map for
// the next answer; nothing of one answer's headers may show in the next, whether the map was kept
// (a few headers) or left behind (more than a small map holds).
func TestAnswerHeaderNotCarriedOver(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/few":
			w.Header().Set("X-First", "1")
			w.Header().Set("Content-Type", "application/json")
			w.Header().Add("Set-Cookie", "a=1")
		case "/many":
			for i := range 12 {
				w.Header().Set("X-Many-"+strconv.Itoa(i), "v")
			}
		}
		w.Write([]byte("ok"))
	})
	ts := startH1(t, &h1.Server{Handler: handler})
	c := dialRaw(t, ts.addr)
	plain := func(resp *http.Response) {
		t.Helper()
		assert.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"), "sniffed, not the last answer's")
		for k := range resp.Header {
			assert.Contains(t, []string{"Content-Type", "Content-Length", "Date"}, k, "a header of an earlier answer")
		}
	}
	for range 2 {
		resp, body := c.get("/few")
		require.Equal(t, "ok", body)
		assert.Equal(t, "1", resp.Header.Get("X-First"))
		assert.Equal(t, []string{"a=1"}, resp.Header.Values("Set-Cookie"))
		assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		resp, _ = c.get("/plain")
		plain(resp)
		resp, _ = c.get("/many")
		assert.Equal(t, "v", resp.Header.Get("X-Many-11"))
		resp, _ = c.get("/plain")
		plain(resp)
	}
}

// TestRequestContextPerRequest: each request on a keep-alive connection has a context of its own,
// live while its handler runs and cancelled once it returned.
func TestRequestContextPerRequest(t *testing.T) {
	ctxs := make(chan context.Context, 2)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Err() != nil {
			http.Error(w, "cancelled", http.StatusInternalServerError)
			return
		}
		ctxs <- r.Context()
	})
	ts := startH1(t, &h1.Server{Handler: handler})
	c := dialRaw(t, ts.addr)
	resp, _ := c.get("/1")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	first := <-ctxs
	resp, _ = c.get("/2")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	second := <-ctxs
	assert.NotSame(t, first, second)
	assert.Error(t, first.Err())
}

// TestRequestHeaderNotCarriedOver: a keep-alive connection reuses its last request's header map
// for the next request's; a handler sees only its own request's headers, whether the map was kept
// or not, and whether the next head is read in place or by textproto (a folded line).
func TestRequestHeaderNotCarriedOver(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, vv := range r.Header {
			w.Header()["Echo-"+k] = vv
		}
	})
	ts := startH1(t, &h1.Server{Handler: handler})
	c := dialRaw(t, ts.addr)
	ask := func(head string) http.Header {
		t.Helper()
		c.write("GET / HTTP/1.1\r\nHost: test\r\n" + head + "\r\n")
		resp, _ := c.mustRead(http.MethodGet)
		got := http.Header{}
		for k, vv := range resp.Header {
			if name, ok := strings.CutPrefix(k, "Echo-"); ok {
				got[name] = vv
			}
		}
		return got
	}
	var many strings.Builder
	for i := range 40 {
		fmt.Fprintf(&many, "X-Many-%d: v\r\n", i)
	}
	for range 2 {
		assert.Equal(t, http.Header{"X-A": {"1", "2"}, "User-Agent": {"a"}}, ask("X-A: 1\r\nX-A: 2\r\nUser-Agent: a\r\n"))
		assert.Equal(t, http.Header{"User-Agent": {"b"}}, ask("User-Agent: b\r\n"))
		assert.Len(t, ask(many.String()), 40)
		assert.Equal(t, http.Header{}, ask(""))
		assert.Equal(t, http.Header{"X-Folded": {"a b"}}, ask("X-Folded: a\r\n b\r\n"))
		assert.Equal(t, http.Header{"X-B": {"3"}}, ask("X-B: 3\r\n"))
		// A head the in-place parser declines part way (a folded line), whose map is not kept.
		assert.Len(t, ask("X-Early: 1\r\nX-Folded: a\r\n b\r\n"+many.String()), 42)
		assert.Equal(t, http.Header{"X-C": {"4"}}, ask("X-C: 4\r\n"))
	}
}

// TestReplacedRequestHeaderNotKept: a handler that puts a map of its own in its request's Header
// keeps that map; the connection keeps (and empties) only the map it made.
func TestReplacedRequestHeaderNotKept(t *testing.T) {
	own := http.Header{"X-Own": {"v"}}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/replace" {
			r.Header = own
		}
	})
	ts := startH1(t, &h1.Server{Handler: handler})
	c := dialRaw(t, ts.addr)
	c.get("/replace")
	c.get("/next")
	assert.Equal(t, http.Header{"X-Own": {"v"}}, own)
}
