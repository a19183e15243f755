package proxytest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lmproxy/lmproxy/messages"
)

// TestLoadSim: 100 replica actors and 100,000 acquire/release cycles from 32 workers, with every
// outcome and every kind of membership change happening under load, leave the registry exact: every
// acquire answered, every lease released and uncounted, the replica list what was registered, health
// what the probes say, no miscount logged, and no goroutine behind.
func TestLoadSim(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	cfg := LoadSimConfig{} // the defaults: 100 replicas, 100,000 cycles
	if testing.Short() {
		cfg.Cycles = 10_000
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	res, err := RunLoadSim(ctx, cfg)
	t.Log(res)
	require.NoError(t, err)
	want := int64(cfg.withDefaults().Cycles)
	require.Equal(t, want, res.Cycles)
	require.Equal(t, res.Leases, res.Releases)
	require.Equal(t, res.Acquires, res.Cycles+res.NoReplica, "every acquire is answered with a lease or with no replica")
	for _, o := range simOutcomes {
		require.Positivef(t, res.Outcomes[o], "no request ended %s", o)
	}
	require.Positive(t, res.Churn.Added)
	require.Positive(t, res.Churn.Evicted)
	require.Positive(t, res.Churn.Readmitted)
	require.Positive(t, res.Churn.Replaced)
	require.Positive(t, res.Churn.Removed)
	goleak.VerifyNone(t, ignore)
}

// TestLoadSimCheckCatchesBrokenInvariants: the end check is not vacuous — it reports a replica listed
// twice, one listed after its removal, one missing, one with a changed registration, one with a
// request still counted, and one whose health disagrees with its probe.
func TestLoadSimCheckCatchesBrokenInvariants(t *testing.T) {
	a, b, d := simRegistration(0, 0), simRegistration(1, 0), simRegistration(2, 0)
	ok := func(reg messages.Registration) messages.ReplicaStatus {
		return messages.ReplicaStatus{Registration: reg, Health: messages.HealthHealthy}
	}
	want := map[string]messages.Registration{a.URL: a, b.URL: b}
	require.NoError(t, checkStatus([]messages.ReplicaStatus{ok(a), ok(b)}, want, nil))

	busy := ok(a)
	busy.Unfinished = 1
	other := ok(b)
	other.Speed++
	down := ok(b)
	down.Health = messages.HealthDown
	cases := map[string]struct {
		st      []messages.ReplicaStatus
		failing []string
	}{
		"listed twice":               {st: []messages.ReplicaStatus{ok(a), ok(a), ok(b)}},
		"listed after its removal":   {st: []messages.ReplicaStatus{ok(a), ok(b), ok(d)}},
		"registered but not listed":  {st: []messages.ReplicaStatus{ok(a)}},
		"in flight":                  {st: []messages.ReplicaStatus{busy, ok(b)}},
		"declares":                   {st: []messages.ReplicaStatus{ok(a), other}},
		"is down, its probe says":    {st: []messages.ReplicaStatus{ok(a), down}},
		"is healthy, its probe says": {st: []messages.ReplicaStatus{ok(a), ok(b)}, failing: []string{b.URL}},
	}
	for problem, tc := range cases {
		err := checkStatus(tc.st, want, tc.failing)
		require.ErrorContains(t, err, problem)
	}
}

// BenchmarkRegistryAcquireRelease measures one request's two registry operations — acquire a Hybrid
// replica of a random model among 100 replicas, release it with OK — from many goroutines at once,
// as HTTP handlers call them.
func BenchmarkRegistryAcquireRelease(b *testing.B) {
	// Probes every minute: the benchmark measures the request path, not the health loop.
	c, err := startSimCluster(time.Minute, 100)
	require.NoError(b, err)
	defer c.stop()
	ctx := context.Background()
	var seed atomic.Uint64
	b.SetParallelism(8) // handlers far outnumber cores
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 0))
		for pb.Next() {
			a, err := c.reg.Acquire(ctx, simModels[rng.IntN(len(simModels))], messages.Hybrid, "")
			if err != nil || a.Status != messages.AcquireOK {
				b.Errorf("acquire: %+v, %v", a, err)
				return
			}
			c.reg.Release(a.Lease, messages.OK, time.Millisecond)
		}
	})
	b.StopTimer()
	require.NoError(b, poll(ctx, 10*time.Second, func() error {
		st, err := c.reg.Status(ctx, true)
		if err != nil {
			return err
		}
		for _, rs := range st {
			if rs.Unfinished != 0 {
				return fmt.Errorf("%s has %d in flight", rs.URL, rs.Unfinished)
			}
		}
		return nil
	}))
}
