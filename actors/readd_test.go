package actors_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// loopLimit bounds a whole register/deregister loop: a hang fails the test instead of the package.
const loopLimit = 60 * time.Second

// runBounded runs body on its own goroutine and fails the test if it does not finish within limit.
func runBounded(t *testing.T, limit time.Duration, body func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		body()
	}()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("did not finish within %v: the registry hangs", limit)
	}
}

// TestReaddStaleReleasesDoNotTouchNewRegistration: a replica removed and added again 100 times,
// with the previous registration's leases released after each re-add (with every outcome): the new
// registration's count, circuit and window never see them, and no replica actor outlives its
// registration.
func TestReaddStaleReleasesDoNotTouchNewRegistration(t *testing.T) {
	p := newFakeProbe(answerHealthy)
	before := goleak.IgnoreCurrent()
	r := startRegistry(t, actors.Config{HealthInterval: time.Millisecond, Probe: p.probe, CircuitCooldown: time.Hour})
	const url = "http://a"
	fail := t.Errorf // the loop runs on its own goroutine: no FailNow there
	runBounded(t, loopLimit, func() {
		ctx := context.Background()
		var held []messages.Lease
		for i := range 100 {
			if err := r.Register(ctx, hybrid(url, 1), messages.HealthHealthy); err != nil {
				fail("iteration %d: register: %v", i, err)
				return
			}
			for j, l := range held {
				r.Release(l, allOutcomes[(i+j)%len(allOutcomes)], time.Second)
			}
			held = held[:0]
			for range 3 {
				a, err := r.Acquire(ctx, testModel, messages.Hybrid, "")
				if err != nil || a.Status != messages.AcquireOK {
					fail("iteration %d: acquire: %v %v", i, err, a.Status)
					return
				}
				held = append(held, a.Lease)
			}
			st, err := r.Status(ctx, true)
			if err != nil || len(st) != 1 {
				fail("iteration %d: status %v %v", i, st, err)
				return
			}
			if s := st[0]; s.Unfinished != 3 || s.Circuit != messages.CircuitClosed || len(s.Latency) != 0 {
				fail("iteration %d: stale releases reached the new registration: %+v", i, s)
				return
			}
			if n := r.replicaActors(1000); n != 1 {
				fail("iteration %d: %d replica actors while one replica is registered", i, n)
				return
			}
			if ok, err := r.Deregister(ctx, url); !ok || err != nil {
				fail("iteration %d: deregister: %v %v", i, ok, err)
				return
			}
			if n := r.replicaActors(1000); n != 0 {
				fail("iteration %d: %d replica actors left after deregister", i, n)
				return
			}
		}
		for _, l := range held {
			r.Release(l, messages.OK, time.Second)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	require.Empty(t, r.status(true))
	require.Equal(t, 0, r.replicaActors(1000))
	require.Equal(t, messages.UnknownModel, r.acquire(testModel).Status)
	r.requireNoMiscount()
	r.stop()
	goleak.VerifyNone(t, before)
}

// TestReaddUnderTrafficNeitherHangsNorLeaks: 100 remove/re-add cycles of one replica while 8
// clients keep acquiring and releasing on it (and on a second, stable replica) never hang, never
// miscount, and leave nothing behind.
func TestReaddUnderTrafficNeitherHangsNorLeaks(t *testing.T) {
	before := goleak.IgnoreCurrent()
	p := newFakeProbe(answerHealthy)
	r := startRegistry(t, actors.Config{HealthInterval: time.Millisecond, Probe: p.probe, CircuitCooldown: time.Millisecond})
	const churn, stable = "http://churn", "http://stable"
	r.mustRegister(hybrid(stable, 1), messages.HealthHealthy)

	stop := make(chan struct{})
	var clients sync.WaitGroup
	for i := range 8 {
		clients.Add(1)
		go func() {
			defer clients.Done()
			rnd := rand.New(rand.NewPCG(uint64(i), 11))
			var held []messages.Lease
			for {
				select {
				case <-stop:
					for _, l := range held {
						r.Release(l, messages.OK, time.Millisecond)
					}
					return
				default:
				}
				a, err := r.Acquire(context.Background(), testModel, messages.Hybrid, "")
				if err != nil {
					t.Errorf("acquire: %v", err)
					return
				}
				if a.Status == messages.AcquireOK {
					held = append(held, a.Lease)
				}
				// Release a random held lease, late: often after its registration ended.
				if len(held) > 4 || (len(held) > 0 && rnd.IntN(2) == 0) {
					k := rnd.IntN(len(held))
					r.Release(held[k], allOutcomes[rnd.IntN(len(allOutcomes))], time.Millisecond)
					held = append(held[:k], held[k+1:]...)
				}
			}
		}()
	}

	runBounded(t, loopLimit, func() {
		ctx := context.Background()
		for i := range 100 {
			if err := r.Register(ctx, hybrid(churn, 2), messages.HealthHealthy); err != nil {
				t.Errorf("iteration %d: register: %v", i, err)
				return
			}
			if ok, err := r.Deregister(ctx, churn); !ok || err != nil {
				t.Errorf("iteration %d: deregister: %v %v", i, ok, err)
				return
			}
		}
	})
	close(stop)
	clients.Wait()

	st := r.status(true)
	require.Len(t, st, 1)
	require.Equal(t, stable, st[0].URL)
	require.Equal(t, 0, st[0].Unfinished)
	require.Equal(t, 1, r.replicaActors(1000), "only the stable replica's actor is left")
	r.requireNoMiscount()
	r.stop()
	goleak.VerifyNone(t, before)
}
