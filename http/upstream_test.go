package http_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

// A replica closes idle keep-alive connections (uvicorn does after 5 s): the next request must not
// fail on the stale pooled connection, and must reach the replica exactly once.
func TestStaleIdleConnectionToReplicaIsNotUsed(t *testing.T) {
	var requests, closed atomic.Int64
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if answerProbes(w, r, "m") {
			return
		}
		requests.Add(1)
		io.WriteString(w, `{"ok":true}`)
	}))
	up.Config.IdleTimeout = 20 * time.Millisecond
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed.Add(1)
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	addURL(t, p, up.URL)

	for i := 1; i <= 3; i++ {
		before := closed.Load()
		code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": "m"})
		require.Equal(t, http.StatusOK, code, string(body))
		require.EqualValues(t, i, requests.Load(), "each request reaches the replica once")
		// Wait until the replica has closed the connection the proxy keeps for reuse.
		require.Eventually(t, func() bool { return closed.Load() > before }, 5*time.Second, time.Millisecond)
	}
	p.WaitIdle(t, 2*time.Second)
}

// --max-conns-per-host bounds the connections to one replica: requests beyond it wait for one.
func TestMaxConnsPerHostMakesRequestsWait(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{MaxConnsPerHost: 1}}, 1,
		proxytest.ReplicaConfig{Tokens: 3, ITL: 20 * time.Millisecond})
	var maxActive atomic.Int64
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if a := reps[0].Active(); a > maxActive.Load() {
				maxActive.Store(a)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			events := streamEvents(t, p.URL+"/v1/chat/completions", `{"model":"sim-model","stream":true}`)
			if len(events) != 4 {
				errs <- io.ErrUnexpectedEOF
				return
			}
			errs <- nil
		}()
	}
	for i := 0; i < 4; i++ {
		require.NoError(t, <-errs)
	}
	close(done)
	require.EqualValues(t, 1, maxActive.Load(), "one connection: one request at a time on the replica")
	p.WaitIdle(t, 2*time.Second)
}

// --max-conns bounds the connections to all replicas: an idle connection to one replica gives its
// place up to a request for another.
func TestMaxConnsFreesIdleConnectionsForOtherReplicas(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{MaxConns: 1}})
	a := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"a"}})
	b := proxytest.StartReplica(t, proxytest.ReplicaConfig{Models: []string{"b"}})
	p.MustAdd(t, a, b)
	for i := 0; i < 3; i++ {
		for _, m := range []string{"a", "b"} {
			code, _, body := postJSON(t, p.URL+"/v1/chat/completions", map[string]any{"model": m})
			require.Equal(t, http.StatusOK, code, string(body))
		}
	}
	p.WaitIdle(t, 2*time.Second)
}
