package http_test

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/proxytest"
)

// A client that leaves must make the replica see its request cancelled within 1 s, and the replica's
// in-flight count must fall back to 0 within 2 s — at each of the three moments of SPEC §7.
func TestClientDisconnectCancelsUpstream(t *testing.T) {
	cases := []struct {
		name   string
		stream bool
		ttft   time.Duration
		itl    time.Duration
		// readFirst: leave after the first event instead of before it.
		readFirst bool
	}{
		{"waiting for a non-stream answer", false, time.Hour, 0, false},
		{"before the first event", true, time.Hour, 0, false},
		{"mid-stream", true, 0, time.Hour, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 1, proxytest.ReplicaConfig{})
			rep := reps[0]
			rep.SetTiming(c.ttft, c.itl, 4)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			body := `{"model":"sim-model","stream":false}`
			if c.stream {
				body = `{"model":"sim-model","stream":true}`
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.URL+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			done := make(chan struct{})
			go func() {
				defer close(done)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return
				}
				defer resp.Body.Close()
				if c.readFirst {
					bufio.NewReader(resp.Body).ReadString('\n')
					cancel()
				}
				<-ctx.Done()
			}()
			select {
			case <-rep.NextRequest():
			case <-time.After(5 * time.Second):
				t.Fatal("the replica never got the request")
			}
			if !c.readFirst {
				cancel()
			}
			<-done
			left := time.Now()
			require.Eventually(t, func() bool { return rep.Cancelled() == 1 }, time.Second, time.Millisecond,
				"the replica must see its request cancelled within 1 s")
			t.Logf("replica saw the cancel %v after the client left", time.Since(left))
			p.WaitIdle(t, 2*time.Second)
		})
	}
}
