package actors_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// allOutcomes is every outcome a request can end with.
var allOutcomes = []messages.Outcome{
	messages.OK, messages.UpstreamError, messages.DialError, messages.Timeout,
	messages.ClientGone, messages.Panic, messages.Rejected,
}

func hybrid(url string, speed float64) messages.Registration {
	return messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid, Speed: speed}
}

// TestConcurrentAcquireReleaseCountsStayExact: 1,000 concurrent acquire/release cycles with random
// outcomes (and some callers whose context ended first) over 3 replicas never show a negative
// in-flight count and leave every count at 0. A client refused while the failures open circuits
// tries again after a cool-down: releases apply at once, so without that most clients would find
// every circuit open and the run would hold few leases at a time.
func TestConcurrentAcquireReleaseCountsStayExact(t *testing.T) {
	r := startRegistry(t, actors.Config{
		HealthInterval:  time.Hour,
		Probe:           newFakeProbe(answerHealthy).probe,
		CircuitCooldown: time.Millisecond, // failures open circuits; let half-open trials through
	})
	urls := []string{"http://a", "http://b", "http://c"}
	for i, u := range urls {
		r.mustRegister(hybrid(u, float64(i+1)), messages.HealthHealthy)
	}

	stop := make(chan struct{})
	var sampler sync.WaitGroup
	var samples atomic.Int64
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			st, err := r.Status(context.Background(), true)
			if err != nil {
				t.Errorf("status: %v", err)
				return
			}
			for _, s := range st {
				if s.Unfinished < 0 || s.Unfinished > 1000 {
					t.Errorf("%s: unfinished %d during the run", s.URL, s.Unfinished)
				}
			}
			samples.Add(1)
		}
	}()

	var wg sync.WaitGroup
	var served, refused, gaveUp atomic.Int64
	for i := range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(i), 7))
			ctx := context.Background()
			if rnd.IntN(10) == 0 { // a client that left before its request was routed
				c, cancel := context.WithCancel(ctx)
				cancel()
				ctx = c
			}
			a, err := r.Acquire(ctx, testModel, messages.Hybrid, "")
			if err != nil {
				gaveUp.Add(1) // a done context takes no lease
				return
			}
			for tries := 1; a.Status != messages.AcquireOK; tries++ {
				refused.Add(1)
				if tries == 5000 {
					t.Errorf("refused %d times in a row: %v", tries, a.Status)
					return
				}
				time.Sleep(time.Millisecond) // the circuits' cool-down
				a, _ = r.Acquire(ctx, testModel, messages.Hybrid, "")
			}
			served.Add(1)
			if rnd.IntN(2) == 0 {
				time.Sleep(time.Duration(rnd.IntN(200)) * time.Microsecond) // hold the lease a moment
			}
			r.Release(a.Lease, allOutcomes[rnd.IntN(len(allOutcomes))], time.Duration(rnd.IntN(1000))*time.Millisecond)
		}()
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	t.Logf("served %d, refused %d, gave up %d; %d status samples", served.Load(), refused.Load(), gaveUp.Load(), samples.Load())
	require.Equal(t, 1000-gaveUp.Load(), served.Load(), "every client that stayed got its cycle")
	require.Positive(t, samples.Load())

	// Release applies before it returns: once every client is done, nothing is in flight.
	st := r.status(true)
	require.Len(t, st, 3)
	for _, s := range st {
		require.Equal(t, 0, s.Unfinished, s.URL)
	}
	r.requireNoMiscount()
}

// TestAcquireBurstSplitsBySpeed: 50 concurrent acquires on two idle replicas of speeds 1 and 4
// split 10/40 exactly under min_expected_latency, because selecting and counting is one step.
func TestAcquireBurstSplitsBySpeed(t *testing.T) {
	for round := range 5 {
		t.Run(strconv.Itoa(round), func(t *testing.T) {
			r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe})
			r.mustRegister(hybrid("http://slow", 1), messages.HealthHealthy)
			r.mustRegister(hybrid("http://fast", 4), messages.HealthHealthy)

			start := make(chan struct{})
			leases := make(chan messages.Lease, 50)
			var wg sync.WaitGroup
			for range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					a, err := r.Acquire(context.Background(), testModel, messages.Hybrid, "")
					if err != nil || a.Status != messages.AcquireOK {
						t.Errorf("acquire: %v %v", err, a.Status)
						return
					}
					leases <- a.Lease
				}()
			}
			close(start)
			wg.Wait()
			close(leases)
			got := map[string]int{}
			var all []messages.Lease
			for l := range leases {
				got[l.URL]++
				all = append(all, l)
			}
			require.Equal(t, map[string]int{"http://slow": 10, "http://fast": 40}, got)
			st := r.status(false)
			require.Equal(t, 40, st[0].Unfinished) // sorted by URL: fast, slow
			require.Equal(t, 10, st[1].Unfinished)
			for _, l := range all {
				r.Release(l, messages.OK, time.Millisecond)
			}
			for _, s := range r.status(false) {
				require.Equal(t, 0, s.Unfinished)
			}
			r.requireNoMiscount()
		})
	}
}

// TestUpsertReplacesRegistrationKeepsCounters: registering a URL again replaces its models, role
// and speed, and keeps its in-flight count, latency window and leases.
func TestUpsertReplacesRegistrationKeepsCounters(t *testing.T) {
	var mu sync.Mutex
	var last []messages.Registration
	r := startRegistry(t, actors.Config{
		HealthInterval: time.Hour,
		Probe:          newFakeProbe(answerHealthy).probe,
		OnChange: func(regs []messages.Registration) {
			mu.Lock()
			last = regs
			mu.Unlock()
		},
	})
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{"a"}, Role: messages.Hybrid, Speed: 1}, messages.HealthHealthy)
	l1, l2, l3 := r.mustAcquire("a"), r.mustAcquire("a"), r.mustAcquire("a")
	r.Release(l1, messages.OK, 1500*time.Millisecond)
	require.Len(t, r.mustReplica(url, false).Latency, 1)

	next := messages.Registration{URL: url, Models: []string{"b", "c"}, Role: messages.Decode, Speed: 3}
	r.mustRegister(next, messages.HealthHealthy)
	s := r.mustReplica(url, false)
	require.Equal(t, next, s.Registration)
	require.Equal(t, 2, s.Unfinished)
	require.Equal(t, []float64{1.5}, s.Latency)
	require.Len(t, r.status(true), 1)
	require.Equal(t, 1, r.replicaActors(10), "the old replica actor is stopped")
	mu.Lock()
	require.Equal(t, []messages.Registration{next}, last)
	mu.Unlock()

	require.Equal(t, messages.UnknownModel, r.acquire("a").Status)
	require.Equal(t, messages.NoRoutableReplica, r.acquire("b").Status, "the role is now Decode")
	a, err := r.Acquire(context.Background(), "c", messages.Decode, "")
	require.NoError(t, err)
	require.Equal(t, messages.AcquireOK, a.Status)
	require.Equal(t, 3, r.mustReplica(url, false).Unfinished)

	// Leases taken before the upsert still count against the same registration.
	r.Release(l2, messages.OK, 2500*time.Millisecond)
	r.Release(l3, messages.ClientGone, 0)
	r.Release(a.Lease, messages.OK, 500*time.Millisecond)
	s = r.mustReplica(url, false)
	require.Equal(t, 0, s.Unfinished)
	require.Equal(t, []float64{1.5, 2.5, 0.5}, s.Latency)
	r.requireNoMiscount()
}

// TestUpsertKeepsSampleOfRequestEndingJustBefore: a request that completes right before its replica
// registers again keeps its latency sample. (When the replica actor kept the window, the replaced
// actor's report of it arrived after the upsert and was dropped as stale.)
func TestUpsertKeepsSampleOfRequestEndingJustBefore(t *testing.T) {
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	for i := range 5 {
		r.Release(r.mustAcquire(testModel), messages.OK, time.Duration(i+1)*time.Second)
		r.mustRegister(hybrid(url, float64(i+2)), messages.HealthHealthy) // no wait in between
	}
	require.Equal(t, []float64{1, 2, 3, 4, 5}, r.mustReplica(url, false).Latency)
	require.Equal(t, 1, r.replicaActors(20))
}

// TestLatencyWindow: only OK outcomes enter the window, in seconds, and it keeps the last 15.
func TestLatencyWindow(t *testing.T) {
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe, CircuitCooldown: time.Hour})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	others := []messages.Outcome{messages.UpstreamError, messages.Timeout, messages.ClientGone, messages.Panic, messages.Rejected}
	for i := range 20 {
		bad, good := r.mustAcquire(testModel), r.mustAcquire(testModel)
		r.Release(bad, others[i%len(others)], 99*time.Second)
		r.Release(good, messages.OK, time.Duration(i+1)*100*time.Millisecond)
	}
	want := make([]float64, 0, 15)
	for i := 6; i <= 20; i++ {
		want = append(want, float64(i)/10)
	}
	s := r.mustReplica(url, false)
	require.InDeltaSlice(t, want, s.Latency, 1e-9)
	require.Equal(t, 0, s.Unfinished)
	require.Equal(t, messages.CircuitClosed, s.Circuit)
	r.requireNoMiscount()
}

// TestClientGoneNeverOpensCircuit: clients leaving (and our own handler panicking) never count
// against a replica.
func TestClientGoneNeverOpensCircuit(t *testing.T) {
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe, CircuitCooldown: time.Hour})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	for range 50 {
		r.Release(r.mustAcquire(testModel), messages.ClientGone, time.Second)
		r.Release(r.mustAcquire(testModel), messages.Panic, time.Second)
	}
	s := r.mustReplica(url, false)
	require.Equal(t, messages.CircuitClosed, s.Circuit)
	require.True(t, s.Routable)
	require.Empty(t, s.Latency)
	require.Equal(t, 0, s.Unfinished)
}

// TestDialErrorOpensCircuitAtOnce: one refused connection is enough to stop routing to a replica.
func TestDialErrorOpensCircuitAtOnce(t *testing.T) {
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe, CircuitCooldown: time.Hour})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	r.Release(r.mustAcquire(testModel), messages.DialError, 0)
	s := r.mustReplica(url, false)
	require.Equal(t, messages.CircuitOpen, s.Circuit)
	require.False(t, s.Routable)
	require.Equal(t, messages.HealthHealthy, s.Health, "the breaker is separate from active health")
	require.Equal(t, messages.NoRoutableReplica, r.acquire(testModel).Status)
}

// TestReAddClosesCircuit: a replica added again has just answered the add's probe, so SPEC §4's
// "routable at once" holds for it even when its circuit was open; its in-flight count is kept.
func TestReAddClosesCircuit(t *testing.T) {
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe, CircuitCooldown: time.Hour})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	held := r.mustAcquire(testModel)
	r.Release(r.mustAcquire(testModel), messages.DialError, 0)
	require.Equal(t, messages.CircuitOpen, r.mustReplica(url, false).Circuit)

	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	s := r.mustReplica(url, false)
	require.Equal(t, messages.CircuitClosed, s.Circuit)
	require.True(t, s.Routable)
	require.Equal(t, 1, s.Unfinished, "a re-add keeps the counters")
	r.Release(held, messages.OK, time.Second)
	r.Release(r.mustAcquire(testModel), messages.OK, time.Second)
	r.requireNoMiscount()
}

// TestUpstreamErrorsAndTimeoutsNeverOpenCircuit pins the breaker as a denial-of-service lever: a 5xx
// answer, a broken answer or a timeout can be one client's doing (LMDeploy answers 500 to a single
// bad request; one long generation outlasts --upstream-timeout), so any number of them in a row
// leaves the replica routable. A refused connection, which no request can cause, still opens it.
func TestUpstreamErrorsAndTimeoutsNeverOpenCircuit(t *testing.T) {
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe, CircuitCooldown: time.Hour})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	end := func(o messages.Outcome) { r.Release(r.mustAcquire(testModel), o, time.Second) }
	for range 5 {
		end(messages.UpstreamError)
		end(messages.UpstreamError)
		end(messages.UpstreamError)
		end(messages.Timeout)
	}
	s := r.mustReplica(url, false)
	require.Equal(t, messages.CircuitClosed, s.Circuit)
	require.True(t, s.Routable)
	end(messages.DialError)
	s = r.mustReplica(url, false)
	require.Equal(t, messages.CircuitOpen, s.Circuit)
	require.False(t, s.Routable)
	require.Equal(t, messages.NoRoutableReplica, r.acquire(testModel).Status)
	r.requireNoMiscount()
}

// takeTrial acquires the half-open trial and checks that a second acquire is refused while it is in
// flight. The trial holds others off for one cool-down, so the check needs the second acquire to
// come within it; on a machine too slow for that, the extra lease is released and not judged.
func takeTrial(t *testing.T, r *testRegistry, cooldown time.Duration) messages.Lease {
	t.Helper()
	took := time.Now()
	trial := r.mustAcquire(testModel)
	second := r.acquire(testModel)
	s := r.mustReplica(trial.URL, false)
	if time.Since(took) < cooldown {
		require.Equal(t, messages.NoRoutableReplica, second.Status, "only one trial at a time")
		require.Equal(t, messages.CircuitHalfOpen, s.Circuit)
		require.False(t, s.Routable)
	} else if second.Status == messages.AcquireOK {
		t.Logf("second acquire came %v after the trial: not judged", time.Since(took))
		r.Release(second.Lease, messages.ClientGone, 0)
	}
	return trial
}

// TestHalfOpenAllowsOneTrial: after the cool-down one trial request goes through; a second one
// concurrent with it is refused; a refused trial opens the circuit again and an OK one closes it.
func TestHalfOpenAllowsOneTrial(t *testing.T) {
	const cooldown = 100 * time.Millisecond
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe, CircuitCooldown: cooldown})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	halfOpen := func() bool { return r.mustReplica(url, false).Circuit == messages.CircuitHalfOpen }

	opened := time.Now()
	r.Release(r.mustAcquire(testModel), messages.DialError, 0)
	a := r.acquire(testModel)
	if time.Since(opened) < cooldown {
		require.Equal(t, messages.NoRoutableReplica, a.Status, "the circuit is open during the cool-down")
	} else if a.Status == messages.AcquireOK { // this machine was too slow to see the open phase
		r.Release(a.Lease, messages.DialError, 0)
	}

	waitFor(t, "the circuit to half-open", halfOpen)
	require.True(t, r.mustReplica(url, false).Routable)
	trial := takeTrial(t, r, cooldown)

	// A refused trial opens the circuit for another cool-down.
	failed := time.Now()
	r.Release(trial, messages.DialError, 0)
	s := r.mustReplica(url, false)
	if time.Since(failed) < cooldown {
		require.Equal(t, messages.CircuitOpen, s.Circuit)
		require.False(t, s.Routable)
	}

	waitFor(t, "the circuit to half-open again", halfOpen)
	trial = takeTrial(t, r, cooldown)
	r.Release(trial, messages.OK, time.Second)
	s = r.mustReplica(url, false)
	require.Equal(t, messages.CircuitClosed, s.Circuit)
	require.True(t, s.Routable)
	l1, l2 := r.mustAcquire(testModel), r.mustAcquire(testModel)
	r.Release(l1, messages.OK, time.Second)
	r.Release(l2, messages.OK, time.Second)
	require.Equal(t, 0, r.mustReplica(url, false).Unfinished)
	r.requireNoMiscount()
}

// TestHalfOpenOneTrialWithOlderRequestsInFlight: a request that was in flight before the circuit
// opened and ends without a verdict on the replica (the client left) must not make room for a
// second concurrent trial.
func TestHalfOpenOneTrialWithOlderRequestsInFlight(t *testing.T) {
	const cooldown = 100 * time.Millisecond
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe, CircuitCooldown: cooldown})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	older, failing := r.mustAcquire(testModel), r.mustAcquire(testModel)
	r.Release(failing, messages.DialError, 0)
	waitFor(t, "the circuit to half-open", func() bool { return r.mustReplica(url, false).Circuit == messages.CircuitHalfOpen })
	took := time.Now()
	trial := r.mustAcquire(testModel)
	r.Release(older, messages.ClientGone, time.Second)
	second := r.acquire(testModel)
	if time.Since(took) < cooldown {
		require.Equal(t, messages.NoRoutableReplica, second.Status, "a second trial while the first is in flight")
	} else if second.Status == messages.AcquireOK {
		t.Logf("second acquire came %v after the trial: not judged", time.Since(took))
		r.Release(second.Lease, messages.ClientGone, 0)
	}
	r.Release(trial, messages.OK, time.Second)
	require.Equal(t, messages.CircuitClosed, r.mustReplica(url, false).Circuit)
	require.Equal(t, 0, r.mustReplica(url, false).Unfinished)
	r.requireNoMiscount()
}

// TestHalfOpenTrialVerdicts: a trial whose client left, or that timed out, says nothing about the
// replica; the circuit stays half-open and lets another trial through within a cool-down, so it can
// never stay shut for good. A trial the replica answered, even 4xx or 5xx, shows it takes
// connections and closes the circuit: a client whose requests fail that way must not keep a replica
// out of routing once one refused connection opened its circuit.
func TestHalfOpenTrialVerdicts(t *testing.T) {
	for _, c := range []struct{ none, answered messages.Outcome }{
		{messages.ClientGone, messages.Rejected},
		{messages.Timeout, messages.UpstreamError},
	} {
		t.Run(c.none.String()+"/"+c.answered.String(), func(t *testing.T) {
			const cooldown = 20 * time.Millisecond
			r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe, CircuitCooldown: cooldown})
			const url = "http://a"
			r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
			r.Release(r.mustAcquire(testModel), messages.DialError, 0)
			routable := func() bool { return r.mustReplica(url, false).Routable }
			waitFor(t, "the circuit to half-open", routable)
			r.Release(r.mustAcquire(testModel), c.none, time.Second)
			require.Equal(t, messages.CircuitHalfOpen, r.mustReplica(url, false).Circuit, "%s is no verdict", c.none)
			waitFor(t, "room for the next trial", routable)
			r.Release(r.mustAcquire(testModel), c.answered, time.Second)
			s := r.mustReplica(url, false)
			require.Equal(t, messages.CircuitClosed, s.Circuit, "an answer shows the replica takes connections")
			require.True(t, s.Routable)
			require.Equal(t, 0, s.Unfinished)
			r.requireNoMiscount()
		})
	}
}

// TestCancelledAcquireTakesNoLease: a caller whose context has ended gets its error and counts
// nothing, so there is nothing to release.
func TestCancelledAcquireTakesNoLease(t *testing.T) {
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe})
	const url = "http://a"
	r.mustRegister(hybrid(url, 1), messages.HealthHealthy)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	a, err := r.Acquire(ctx, testModel, messages.Hybrid, "")
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, messages.Acquired{}, a)
	s := r.mustReplica(url, false)
	require.Equal(t, 0, s.Unfinished)
	require.Equal(t, messages.CircuitClosed, s.Circuit)
	require.Empty(t, s.Latency)
	r.Release(r.mustAcquire(testModel), messages.OK, time.Millisecond) // a live context is served
	require.Equal(t, 0, r.mustReplica(url, false).Unfinished)
	r.requireNoMiscount()
}

// TestCancelledAcquirePairTakesNoLease: the same for a DistServe pair, with and without prefill.
func TestCancelledAcquirePairTakesNoLease(t *testing.T) {
	r := startRegistry(t, actors.Config{HealthInterval: time.Hour, Probe: newFakeProbe(answerHealthy).probe})
	r.mustRegister(messages.Registration{URL: "http://p", Models: []string{testModel}, Role: messages.Prefill}, messages.HealthHealthy)
	r.mustRegister(messages.Registration{URL: "http://d", Models: []string{testModel}, Role: messages.Decode}, messages.HealthHealthy)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, noPrefill := range []bool{false, true} {
		a, err := r.AcquirePair(ctx, testModel, noPrefill)
		require.ErrorIs(t, err, context.Canceled)
		require.Equal(t, messages.AcquiredPair{}, a)
	}
	for _, s := range r.status(true) {
		require.Equal(t, 0, s.Unfinished, s.URL)
	}
	r.requireNoMiscount()
}

// TestAcquireAndReleaseBypassTheActor: routing runs on the caller's goroutine under the registry's
// lock, not in the actor. While the registry actor is stuck in an OnChange callback, acquires and
// releases still work and keep exact counts (a burst splits 10/40 by speed, releases feed the
// windows), which also shows that callbacks run without the lock held.
func TestAcquireAndReleaseBypassTheActor(t *testing.T) {
	var block atomic.Bool
	entered, unblock := make(chan struct{}), make(chan struct{})
	r := startRegistry(t, actors.Config{
		HealthInterval: time.Hour,
		Probe:          newFakeProbe(answerHealthy).probe,
		OnChange: func([]messages.Registration) {
			if block.CompareAndSwap(true, false) {
				close(entered)
				<-unblock
			}
		},
	})
	release := sync.OnceFunc(func() { close(unblock) })
	t.Cleanup(release) // runs before the registry stops
	r.mustRegister(hybrid("http://slow", 1), messages.HealthHealthy)
	r.mustRegister(hybrid("http://fast", 4), messages.HealthHealthy)

	// Registering a replica of another model makes the actor call OnChange, which blocks.
	block.Store(true)
	registered := make(chan error, 1)
	go func() {
		other := messages.Registration{URL: "http://other", Models: []string{"other"}, Role: messages.Hybrid}
		registered <- r.Register(context.Background(), other, messages.HealthHealthy)
	}()
	select {
	case <-entered:
	case <-time.After(waitLimit):
		t.Fatal("the registry actor never called OnChange")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := r.Status(ctx, false)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "the registry actor is busy")

	got := map[string]int{}
	runBounded(t, waitLimit, func() {
		var leases []messages.Lease
		for range 50 {
			a, err := r.Acquire(context.Background(), testModel, messages.Hybrid, "")
			if err != nil || a.Status != messages.AcquireOK {
				t.Errorf("acquire while the actor is busy: %v %v", err, a.Status)
				return
			}
			got[a.URL]++
			leases = append(leases, a.Lease)
		}
		for _, l := range leases {
			r.Release(l, messages.OK, time.Second)
		}
	})
	require.Equal(t, map[string]int{"http://slow": 10, "http://fast": 40}, got)

	release()
	require.NoError(t, <-registered)
	st := r.status(false) // sorted by URL: fast, other, slow
	require.Len(t, st, 3)
	for _, s := range st {
		require.Equal(t, 0, s.Unfinished, s.URL)
	}
	require.Len(t, st[0].Latency, 15, "the window keeps the last 15 of fast's 40")
	require.Len(t, st[2].Latency, 10)
	r.requireNoMiscount()
}
