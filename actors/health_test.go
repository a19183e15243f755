package actors_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
	"github.com/lmproxy/lmproxy/proxytest"
)

func TestClassifyHealth(t *testing.T) {
	cases := []struct {
		name   string
		status int
		body   string
		want   messages.Health // "" means a failure
	}{
		{"200 healthy", 200, `{"status":"healthy"}`, messages.HealthHealthy},
		{"200 healthy with message", 200, `{"status":"healthy","message":"ok"}`, messages.HealthHealthy},
		{"200 status in capitals", 200, `{"status":"Healthy"}`, messages.HealthHealthy},
		{"503 healthy: the JSON decides", 503, `{"status":"healthy"}`, messages.HealthHealthy},
		{"200 sleeping", 200, `{"status":"sleeping"}`, messages.HealthSleeping},
		{"503 sleeping", 503, `{"status":"sleeping"}`, messages.HealthSleeping},
		{"503 initializing", 503, `{"status":"initializing"}`, messages.HealthInitializing},
		{"200 initializing", 200, `{"status":"initializing"}`, messages.HealthInitializing},
		{"503 unhealthy", 503, `{"status":"unhealthy"}`, ""},
		{"200 unhealthy", 200, `{"status":"unhealthy"}`, ""},
		{"200 unknown word", 200, `{"status":"degraded"}`, ""},
		{"200 empty status", 200, `{"status":""}`, ""},
		{"200 no body", 200, ``, messages.HealthHealthy},
		{"200 text body", 200, `OK`, messages.HealthHealthy},
		{"200 JSON without status", 200, `{"message":"up"}`, messages.HealthHealthy},
		{"500 no body", 500, ``, ""},
		{"500 text body", 500, "Internal Server Error\n", ""},
		{"503 no body", 503, ``, ""},
		{"503 JSON without status", 503, `{"message":"busy"}`, ""},
		{"404 no body", 404, ``, ""},
		{"502 HTML", 502, `<html>Bad Gateway</html>`, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := actors.ClassifyHealth(tc.status, []byte(tc.body))
			if tc.want == "" {
				require.Error(t, err, "health %q", h)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, h)
		})
	}
}

// TestHTTPProbeSimulatedReplica runs actors.HTTPProbe against a real listener in every /health mode of the
// simulated replica, and against a refused connection.
func TestHTTPProbeSimulatedReplica(t *testing.T) {
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	probe := actors.HTTPProbe(&http.Client{Transport: tr})
	cases := []struct {
		mode string
		want messages.Health // "" means a failure
	}{
		{"healthy", messages.HealthHealthy},
		{"sleeping", messages.HealthSleeping},
		{"initializing", messages.HealthInitializing},
		{"unhealthy", ""},
		{"empty", messages.HealthHealthy},
		{"error", ""},
		{"hang", ""},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			rep.SetHealth(tc.mode)
			timeout := waitLimit
			if tc.mode == "hang" {
				timeout = 100 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			h, err := probe(ctx, rep.URL+"/")
			if tc.want == "" {
				require.Error(t, err, "health %q", h)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, h)
		})
	}
	t.Run("refused", func(t *testing.T) {
		_, err := probe(context.Background(), proxytest.DeadAddr(t))
		require.Error(t, err)
	})
}

// TestEvictionAfterHealthFailures: HealthFailures consecutive failures take a replica out of
// routing; it is then listed only with IncludeDown.
func TestEvictionAfterHealthFailures(t *testing.T) {
	p := newStepProbe()
	r := startRegistry(t, actors.Config{HealthInterval: 5 * time.Millisecond, HealthFailures: 3, Probe: p.probe})
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthHealthy)

	c := p.next(t)
	require.Equal(t, url, c.url)
	for i := 1; i < 3; i++ {
		c = p.step(t, c, answerFail)
		s := r.mustReplica(url, false)
		require.Equal(t, messages.HealthHealthy, s.Health)
		require.Equal(t, i, s.Failures)
		require.True(t, s.Routable)
	}
	l := r.mustAcquire(testModel)
	r.Release(l, messages.OK, time.Millisecond)

	c = p.step(t, c, answerFail)
	_, listed := r.replica(url, false)
	require.False(t, listed, "an evicted replica is hidden without IncludeDown")
	s := r.mustReplica(url, true)
	require.Equal(t, messages.HealthDown, s.Health)
	require.False(t, s.Routable)
	require.False(t, s.DownSince.IsZero())
	require.Equal(t, 3, s.Failures)
	require.Equal(t, messages.NoRoutableReplica, r.acquire(testModel).Status)
	c.reply(answerFail)
}

// TestSuccessResetsFailureCount: a success before the threshold starts the count again.
func TestSuccessResetsFailureCount(t *testing.T) {
	p := newStepProbe()
	r := startRegistry(t, actors.Config{HealthInterval: 5 * time.Millisecond, HealthFailures: 3, Probe: p.probe})
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthHealthy)

	c := p.next(t)
	c = p.step(t, c, answerFail)
	c = p.step(t, c, answerFail)
	require.Equal(t, 2, r.mustReplica(url, false).Failures)
	c = p.step(t, c, answerHealthy)
	require.Equal(t, 0, r.mustReplica(url, false).Failures)
	c = p.step(t, c, answerFail)
	c = p.step(t, c, answerFail)
	s := r.mustReplica(url, false)
	require.Equal(t, messages.HealthHealthy, s.Health, "two failures after a success are below the threshold of 3")
	require.Equal(t, 2, s.Failures)
	require.True(t, s.Routable)
	c = p.step(t, c, answerFail)
	require.Equal(t, messages.HealthDown, r.mustReplica(url, true).Health)
	c.reply(answerFail)
}

// TestInitializingIsNotAFailure: an initializing replica is not routed to, and no number of
// initializing answers evicts it.
func TestInitializingIsNotAFailure(t *testing.T) {
	p := newStepProbe()
	r := startRegistry(t, actors.Config{HealthInterval: time.Millisecond, HealthFailures: 2, Probe: p.probe})
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, "")

	c := p.next(t) // an unprobed replica is probed at once
	for range 50 {
		c = p.step(t, c, answerInitializing)
	}
	s := r.mustReplica(url, false)
	require.Equal(t, messages.HealthInitializing, s.Health)
	require.Equal(t, 0, s.Failures)
	require.False(t, s.Routable)
	require.Equal(t, messages.NoRoutableReplica, r.acquire(testModel).Status)

	// One failure between initializing answers is still one, not the threshold.
	c = p.step(t, c, answerFail)
	c = p.step(t, c, answerInitializing)
	s = r.mustReplica(url, false)
	require.Equal(t, messages.HealthInitializing, s.Health)
	require.Equal(t, 1, s.Failures)

	c = p.step(t, c, answerHealthy)
	s = r.mustReplica(url, false)
	require.Equal(t, messages.HealthHealthy, s.Health)
	require.True(t, s.Routable)
	r.Release(r.mustAcquire(testModel), messages.OK, time.Millisecond)
	c.reply(answerHealthy)
}

// TestSleepingIsKeptButNotRouted: a sleeping replica stays listed and is never evicted, but gets
// no traffic until it is healthy again.
func TestSleepingIsKeptButNotRouted(t *testing.T) {
	p := newStepProbe()
	r := startRegistry(t, actors.Config{HealthInterval: time.Millisecond, HealthFailures: 2, Probe: p.probe})
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthHealthy)

	c := p.next(t)
	for range 20 {
		c = p.step(t, c, answerSleeping)
	}
	s := r.mustReplica(url, false)
	require.Equal(t, messages.HealthSleeping, s.Health)
	require.Equal(t, 0, s.Failures)
	require.False(t, s.Routable)
	require.Equal(t, messages.NoRoutableReplica, r.acquire(testModel).Status)

	c = p.step(t, c, answerHealthy)
	require.True(t, r.mustReplica(url, false).Routable)
	r.Release(r.mustAcquire(testModel), messages.OK, time.Millisecond)
	c.reply(answerHealthy)
}

// TestEmptyHealthBodyIsHealthy: over real HTTP, a 200 without a body makes an unprobed replica
// routable.
func TestEmptyHealthBodyIsHealthy(t *testing.T) {
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	rep.SetHealth("empty")
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	r := startRegistry(t, actors.Config{
		HealthInterval: 10 * time.Millisecond,
		HealthFailures: 1,
		Probe:          actors.HTTPProbe(&http.Client{Transport: tr}),
	})
	r.mustRegister(messages.Registration{URL: rep.URL, Models: []string{testModel}, Role: messages.Hybrid}, "")
	waitFor(t, "the replica to be routable", func() bool {
		s, ok := r.replica(rep.URL, true)
		return ok && s.Routable
	})
	s := r.mustReplica(rep.URL, false)
	require.Equal(t, messages.HealthHealthy, s.Health)
	require.Equal(t, 0, s.Failures)
}

// TestProbeTimeoutIsAFailure: a /health that never answers fails after HealthTimeout, and enough
// of those evict the replica.
func TestProbeTimeoutIsAFailure(t *testing.T) {
	rep := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	rep.SetHealth("hang")
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	r := startRegistry(t, actors.Config{
		HealthInterval: 10 * time.Millisecond,
		HealthTimeout:  30 * time.Millisecond,
		HealthFailures: 2,
		Probe:          actors.HTTPProbe(&http.Client{Transport: tr}),
	})
	start := time.Now()
	r.mustRegister(messages.Registration{URL: rep.URL, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthHealthy)
	waitFor(t, "the hanging replica to be evicted", func() bool {
		s, ok := r.replica(rep.URL, true)
		return ok && s.Health == messages.HealthDown
	})
	// Two probes of at least HealthTimeout each, after one interval.
	require.GreaterOrEqual(t, time.Since(start), 10*time.Millisecond+2*30*time.Millisecond)
	require.Equal(t, messages.NoRoutableReplica, r.acquire(testModel).Status)
}

// TestProbePanicIsAFailure: a ProbeFunc that panics counts as a failed probe instead of taking the
// process down.
func TestProbePanicIsAFailure(t *testing.T) {
	r := startRegistry(t, actors.Config{
		HealthInterval: time.Millisecond,
		HealthFailures: 2,
		Probe:          func(context.Context, string) (messages.Health, error) { panic("probe bug") },
	})
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthHealthy)
	waitFor(t, "the replica to be evicted", func() bool {
		s, ok := r.replica(url, true)
		return ok && s.Health == messages.HealthDown
	})
}
