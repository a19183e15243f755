package http_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/proxytest"
)

// 500 concurrent mixed requests over 3 replicas — streams and not, clients leaving early, one replica
// failing mid-stream — must end with every in-flight count at 0 and no goroutine left (TestMain).
func TestConcurrentMixedRequestsLeaveNothingBehind(t *testing.T) {
	p, reps := proxytest.StartCluster(t, proxytest.ProxyConfig{}, 3, proxytest.ReplicaConfig{
		Tokens: 8, TTFT: 2 * time.Millisecond, ITL: time.Millisecond, MaxRecorded: 10,
	})
	reps[2].SetFault(proxytest.Fault{CutAfter: 3})

	tr := &http.Transport{MaxIdleConnsPerHost: 500}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	var ok, leftEarly, failed atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 500; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(i), 7))
			stream := i%2 == 0
			leave := i%5 == 0
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			path := "/v1/chat/completions"
			if i%3 == 0 {
				path = "/v1/completions"
			}
			body := fmt.Sprintf(`{"model":"sim-model","stream":%v,"prompt":"p","messages":[]}`, stream)
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.URL+path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			if leave && !stream {
				time.AfterFunc(time.Duration(rnd.IntN(5))*time.Millisecond, cancel)
			}
			resp, err := client.Do(req)
			if err != nil {
				leftEarly.Add(1)
				return
			}
			defer resp.Body.Close()
			if leave && stream {
				bufio.NewReader(resp.Body).ReadString('\n')
				cancel()
				leftEarly.Add(1)
				return
			}
			b, err := io.ReadAll(resp.Body)
			switch {
			case err != nil || resp.StatusCode != http.StatusOK:
				failed.Add(1)
			case stream && strings.Contains(string(b), `"error"`):
				failed.Add(1) // the replica cut the stream: one error event ended it
			default:
				ok.Add(1)
			}
		}(i)
	}
	wg.Wait()
	t.Logf("ok=%d left early=%d failed=%d", ok.Load(), leftEarly.Load(), failed.Load())
	require.EqualValues(t, 500, ok.Load()+leftEarly.Load()+failed.Load())
	require.Positive(t, ok.Load())
	p.WaitIdle(t, 5*time.Second)
	for _, r := range reps {
		require.Eventually(t, func() bool { return r.Active() == 0 }, 5*time.Second, time.Millisecond)
	}
}
