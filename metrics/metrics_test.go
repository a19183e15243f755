package metrics_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/messages"
	"github.com/lmproxy/lmproxy/metrics"
)

// scrape returns the metrics' text exposition.
func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	return rec.Body.String()
}

// line returns the sample line of a series whose text starts with prefix.
func line(t *testing.T, text, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("no series %s in\n%s", prefix, text)
	return ""
}

func TestRequestSeries(t *testing.T) {
	m := metrics.New(func() []messages.ReplicaStatus { return nil })
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				m.Request("/v1/chat/completions", "m1", "http://r1", 200, 20*time.Millisecond, 5*time.Millisecond, 3, messages.OK)
			}
		}()
	}
	wg.Wait()
	m.Request("/v1/chat/completions", "m1", "http://r1", 502, time.Second, 0, 0, messages.UpstreamError)
	m.Request("/v1/completions", "", "", 404, time.Millisecond, 0, 0, messages.OK)
	m.Request("/v1/completions", "m1", "http://r2", 200, time.Millisecond, 0, 0, messages.OK)
	m.Request("/v1/chat/completions", "m1", "", 499, time.Millisecond, 0, 0, messages.ClientGone)

	text := scrape(t, m)
	require.Equal(t, `lmproxy_requests_total{model="m1",replica="http://r1",route="/v1/chat/completions",status="200"} 400`,
		line(t, text, `lmproxy_requests_total{model="m1",replica="http://r1",route="/v1/chat/completions",status="200"}`))
	require.Equal(t, `lmproxy_requests_total{model="m1",replica="http://r1",route="/v1/chat/completions",status="502"} 1`,
		line(t, text, `lmproxy_requests_total{model="m1",replica="http://r1",route="/v1/chat/completions",status="502"}`))
	require.Equal(t, `lmproxy_requests_total{model="",replica="",route="/v1/completions",status="404"} 1`,
		line(t, text, `lmproxy_requests_total{model="",replica="",route="/v1/completions",status="404"}`))
	require.Equal(t, `lmproxy_request_duration_seconds_count{model="m1",route="/v1/chat/completions"} 402`,
		line(t, text, `lmproxy_request_duration_seconds_count{model="m1",route="/v1/chat/completions"}`))
	require.Equal(t, `lmproxy_time_to_first_token_seconds_count{model="m1"} 400`,
		line(t, text, `lmproxy_time_to_first_token_seconds_count{model="m1"}`), "no TTFT without a first byte")
	require.Equal(t, `lmproxy_sse_events_total{replica="http://r1"} 1200`, line(t, text, `lmproxy_sse_events_total{replica="http://r1"}`))
	require.Equal(t, `lmproxy_sse_events_total{replica="http://r2"} 0`, line(t, text, `lmproxy_sse_events_total{replica="http://r2"}`),
		"a replica's series starts at 0 with its first request")
	require.NotContains(t, text, `lmproxy_sse_events_total{replica=""}`)
	require.Equal(t, `lmproxy_client_disconnects_total{route="/v1/chat/completions"} 1`,
		line(t, text, `lmproxy_client_disconnects_total{route="/v1/chat/completions"}`))
	require.Equal(t, `lmproxy_upstream_errors_total{kind="upstream_error",replica="http://r1"} 1`,
		line(t, text, `lmproxy_upstream_errors_total{kind="upstream_error",replica="http://r1"}`))
	require.NotContains(t, text, `lmproxy_time_to_first_token_seconds_count{model=""}`)
}

// A replica's requests recorded while KeepReplicas drops it must not leave a cached series that is
// no longer exported: once the replica is registered again, its requests would be counted where no
// scrape sees them.
func TestKeepReplicasAndRequestsAtOnce(t *testing.T) {
	const url = "http://a:1"
	regs := []messages.Registration{{URL: url}}
	requests := func(m *metrics.Metrics) float64 { // 0 when the series is absent
		for _, l := range strings.Split(scrape(t, m), "\n") {
			if strings.HasPrefix(l, "lmproxy_requests_total{") && strings.Contains(l, url) {
				v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
				require.NoError(t, err)
				return v
			}
		}
		return 0
	}
	for attempt := 0; attempt < 300; attempt++ {
		m := metrics.New(func() []messages.ReplicaStatus { return nil })
		m.KeepReplicas(regs)
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				m.Request("/v1/chat/completions", "m", url, 200, time.Millisecond, 0, 0, messages.OK)
			}
		}()
		m.KeepReplicas(nil) // the replica leaves while its requests end
		close(done)
		wg.Wait()
		m.KeepReplicas(regs) // and comes back
		before := requests(m)
		m.Request("/v1/chat/completions", "m", url, 200, time.Millisecond, 0, 0, messages.OK)
		require.Equal(t, before+1, requests(m), "attempt %d: the request of the replica registered again is exported", attempt)
	}
}

// BenchmarkRequest is what the access log's metrics cost a finished request.
func BenchmarkRequest(b *testing.B) {
	m := metrics.New(func() []messages.ReplicaStatus { return nil })
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Request("/v1/chat/completions", "internlm2", "http://10.0.0.7:23333", 200, 20*time.Millisecond, 5*time.Millisecond, 17, messages.OK)
		}
	})
}
