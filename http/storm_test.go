package http_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lmproxy/lmproxy/proxytest"
)

// connCountingReplica is a replica that streams one event and then waits for its client forever. It
// watches its own connections from the server's side, so a test sees every upstream connection the
// proxy still holds, whatever the proxy believes.
type connCountingReplica struct {
	*httptest.Server
	active    atomic.Int64 // inference handlers running
	started   atomic.Int64
	cancelled atomic.Int64 // handlers that ended because the proxy closed the request

	mu    sync.Mutex
	conns map[net.Conn]*connInfo
}

// connInfo is what the replica knows of one open connection.
type connInfo struct {
	state     http.ConnState
	inference bool // it carried an inference request, not only probes of /health or /v1/models
}

// connKey finds a request's connection in its context.
type connKey struct{}

func startConnCountingReplica(t *testing.T) *connCountingReplica {
	r := &connCountingReplica{conns: map[net.Conn]*connInfo{}}
	r.Server = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}
	r.Config.ConnState = func(c net.Conn, s http.ConnState) {
		r.mu.Lock()
		defer r.mu.Unlock()
		switch info := r.conns[c]; {
		case s == http.StateClosed || s == http.StateHijacked:
			delete(r.conns, c)
		case info == nil:
			r.conns[c] = &connInfo{state: s}
		default:
			info.state = s
		}
	}
	r.Start()
	t.Cleanup(r.Close)
	return r
}

func (r *connCountingReplica) serve(w http.ResponseWriter, req *http.Request) {
	if answerProbes(w, req, "storm") {
		return
	}
	r.mu.Lock()
	if info := r.conns[req.Context().Value(connKey{}).(net.Conn)]; info != nil {
		info.inference = true
	}
	r.mu.Unlock()
	r.started.Add(1)
	r.active.Add(1)
	defer r.active.Add(-1)
	io.Copy(io.Discard, req.Body)
	w.Header().Set("Content-Type", "text/event-stream")
	io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n")
	http.NewResponseController(w).Flush()
	// The next token would never come: only the proxy closing the request ends this handler.
	<-req.Context().Done()
	r.cancelled.Add(1)
}

// open counts the connections that are neither closed nor hijacked, by state, with "+inference"
// after the state of those that carried an inference request.
func (r *connCountingReplica) open() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for _, info := range r.conns {
		k := info.state.String()
		if info.inference {
			k += "+inference"
		}
		out[k]++
	}
	return out
}

// openInference counts the open connections that carried an inference request.
func (r *connCountingReplica) openInference() int {
	n := 0
	for k, v := range r.open() {
		if strings.HasSuffix(k, "+inference") {
			n += v
		}
	}
	return n
}

// 1,000 clients that all leave mid-stream at once leave nothing behind: no request on any replica,
// no upstream connection still serving one, no in-flight count, and no goroutine once the proxy
// is closed.
func TestStormOfClientsLeavingMidStreamLeavesNothing(t *testing.T) {
	const clients = 1000
	before := goleak.IgnoreCurrent()
	reps := []*connCountingReplica{startConnCountingReplica(t), startConnCountingReplica(t)}
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	for _, r := range reps {
		addURL(t, p, r.URL)
	}

	tr := &http.Transport{MaxIdleConnsPerHost: -1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var ready, done sync.WaitGroup
	leave := make(chan struct{})
	var firstEvents atomic.Int64
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			readied := false
			defer func() {
				if !readied {
					ready.Done()
				}
			}()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.URL+"/v1/chat/completions",
				strings.NewReader(`{"model":"storm","stream":true}`))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			if err != nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(line, "data: ") {
				errs <- fmt.Errorf("HTTP %d, first line %q: %v", resp.StatusCode, line, err)
				return
			}
			firstEvents.Add(1)
			readied = true
			ready.Done()
			<-leave
			cancel() // leave mid-stream, all together
		}()
	}
	waitGroup(t, &ready, 60*time.Second, "clients never all got their first event")
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	require.EqualValues(t, clients, firstEvents.Load())
	inFlight := 0
	for _, n := range p.Unfinished(t) {
		inFlight += n
	}
	require.Equal(t, clients, inFlight, "every stream is counted while it runs")
	require.EqualValues(t, clients, reps[0].active.Load()+reps[1].active.Load())

	close(leave)
	waitGroup(t, &done, 30*time.Second, "clients never finished leaving")
	p.WaitIdle(t, 10*time.Second)
	for _, r := range reps {
		require.Eventually(t, func() bool { return r.active.Load() == 0 }, 10*time.Second, time.Millisecond,
			"requests still running on %s: %d", r.URL, r.active.Load())
		require.Equal(t, r.started.Load(), r.cancelled.Load(), "every upstream request was cancelled")
		// A cancelled response cannot be reused: the proxy must have closed every connection that
		// carried a stream. The probes' and /nodes/add's own pools may keep theirs.
		require.Eventually(t, func() bool { return r.openInference() == 0 }, 10*time.Second, time.Millisecond,
			"upstream connections left open after the storm on %s: %v", r.URL, r.open())
		t.Logf("%s: %d streams, connections still open: %v", r.URL, r.started.Load(), r.open())
	}

	p.Close()
	for _, r := range reps {
		require.Eventually(t, func() bool { return len(r.open()) == 0 }, 10*time.Second, time.Millisecond,
			"upstream connections survive the proxy's Close on %s: %v", r.URL, r.open())
		r.Close()
	}
	tr.CloseIdleConnections()
	goleak.VerifyNone(t, before)
}

// waitGroup waits for wg, failing the test after limit.
func waitGroup(t *testing.T, wg *sync.WaitGroup, limit time.Duration, msg string) {
	t.Helper()
	ch := make(chan struct{})
	go func() {
		wg.Wait()
		close(ch)
	}()
	select {
	case <-ch:
	case <-time.After(limit):
		t.Fatal(msg)
	}
}
