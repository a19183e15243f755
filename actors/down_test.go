package actors_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// TestDownReplicaBackoffAndReadmission: an evicted replica keeps being probed, at gaps that double
// from the health interval up to 8× it, and becomes routable again on its first good probe without
// registering again.
func TestDownReplicaBackoffAndReadmission(t *testing.T) {
	const interval = 5 * time.Millisecond
	p := newFakeProbe(answerFail)
	var mu sync.Mutex
	onChange := 0
	r := startRegistry(t, actors.Config{
		HealthInterval: interval,
		HealthFailures: 1,
		Probe:          p.probe,
		OnChange: func([]messages.Registration) {
			mu.Lock()
			onChange++
			mu.Unlock()
		},
	})
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthHealthy)

	// The first probe (after one interval) evicts; then 1×, 2×, 4×, 8×, 8×...
	const probes = 11
	waitFor(t, "11 probes", func() bool { return p.calls(url) >= probes })
	s := r.mustReplica(url, true)
	require.Equal(t, messages.HealthDown, s.Health)
	require.False(t, s.Routable)

	at := p.started(url)[:probes]
	gaps := make([]time.Duration, 0, probes-1)
	for i := 1; i < len(at); i++ {
		gaps = append(gaps, at[i].Sub(at[i-1]))
	}
	t.Logf("gaps between probes of the down replica: %v", gaps)
	capped := false
	for i, g := range gaps {
		// A timer never fires early: each gap is at least the backoff (less a little clock rounding).
		want := min(interval<<i, 8*interval)
		require.GreaterOrEqualf(t, g, want-time.Millisecond, "gap %d: %v, want at least %v", i, g, want)
		// Had the backoff kept doubling, gap i would be at least 2^i× the interval. One later gap
		// below that proves the cap without betting on how fast this machine schedules timers.
		if i >= 4 && g < interval<<i {
			capped = true
		}
	}
	require.True(t, capped, "backoff not capped at 8× the interval: %v", gaps)

	mu.Lock()
	before := onChange
	mu.Unlock()
	p.set(answerHealthy)
	waitFor(t, "the replica to come back", func() bool {
		s, ok := r.replica(url, false)
		return ok && s.Routable
	})
	s = r.mustReplica(url, false)
	require.Equal(t, messages.HealthHealthy, s.Health)
	require.Equal(t, 0, s.Failures)
	require.True(t, s.DownSince.IsZero())
	r.Release(r.mustAcquire(testModel), messages.OK, time.Millisecond)
	mu.Lock()
	require.Equal(t, before, onChange, "re-admission must not re-register the replica")
	mu.Unlock()
}

// TestDownReplicaExpiresAfterDownTTL: a replica down for longer than DownTTL leaves the registry and
// its actor stops.
func TestDownReplicaExpiresAfterDownTTL(t *testing.T) {
	p := newFakeProbe(answerFail)
	var mu sync.Mutex
	var last []messages.Registration
	r := startRegistry(t, actors.Config{
		HealthInterval: time.Millisecond,
		HealthFailures: 1,
		DownTTL:        5 * time.Millisecond,
		Probe:          p.probe,
		OnChange: func(regs []messages.Registration) {
			mu.Lock()
			last = regs
			mu.Unlock()
		},
	})
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthHealthy)
	require.Equal(t, 1, r.replicaActors(10))
	waitFor(t, "the down replica to expire", func() bool { return len(r.status(true)) == 0 })

	mu.Lock()
	require.Empty(t, last, "OnChange is told of the removal")
	mu.Unlock()
	require.Equal(t, messages.UnknownModel, r.acquire(testModel).Status)
	require.Equal(t, 0, r.replicaActors(10), "the expired replica's actor is stopped")
	require.False(t, r.mustDeregister(url), "the expired replica is no longer registered")
}

// TestUnknownReplicaEvictedOnlyAfterOneHealthInterval: a replica not heard from since it was
// registered (added before it listens, or restored from the state file) is probed every second or
// health interval, whichever is shorter, but its failures count only once one health interval has
// passed since the registration; from then on the usual --health-failures rule evicts it.
func TestUnknownReplicaEvictedOnlyAfterOneHealthInterval(t *testing.T) {
	const interval = 300 * time.Millisecond
	for _, failures := range []int{1, 2} {
		t.Run(strconv.Itoa(failures), func(t *testing.T) {
			p := newFakeProbe(answerFail)
			r := startRegistry(t, actors.Config{HealthInterval: interval, HealthFailures: failures, Probe: p.probe})
			const url = "http://a"
			registered := time.Now()
			r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthUnknown)
			var s messages.ReplicaStatus // as first seen down: later probes of the down list add failures
			waitFor(t, "the replica's eviction", func() bool {
				s = r.mustReplica(url, true)
				return s.Health == messages.HealthDown
			})
			require.GreaterOrEqual(t, s.DownSince.Sub(registered), interval, "evicted within its first health interval")
			require.Equal(t, failures, s.Failures, "failures count from the end of the first interval")
			require.GreaterOrEqual(t, p.calls(url), failures+1, "probed during its first interval too")
		})
	}
}
