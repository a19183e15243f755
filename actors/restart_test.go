package actors_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthdm/hollywood/actor"
	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// watchRestarts subscribes an actor to the engine's event stream that passes every
// ActorRestartedEvent to the returned channel. It unsubscribes the watcher before stopping it
// (a stopped subscriber makes the event stream loop on dead letters), before the registry stops.
func watchRestarts(t *testing.T, r *testRegistry) <-chan actor.ActorRestartedEvent {
	t.Helper()
	events := make(chan actor.ActorRestartedEvent, 16)
	w := r.e.SpawnFunc(func(c *actor.Context) {
		if ev, ok := c.Message().(actor.ActorRestartedEvent); ok {
			select {
			case events <- ev:
			default:
			}
		}
	}, "restart-watcher")
	// Subscribing is a message to the event stream; any event broadcast after this call is queued
	// behind it, so no restart caused later by the test is missed.
	r.e.Subscribe(w)
	t.Cleanup(func() {
		r.e.Unsubscribe(w)
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		<-r.e.PoisonCtx(ctx, w).Done()
	})
	return events
}

// panicOnce returns a replica middleware that panics the first time a replica actor receives a
// message for which match is true.
func panicOnce(match func(any) bool) actor.MiddlewareFunc {
	var done atomic.Bool
	return func(next actor.ReceiveFunc) actor.ReceiveFunc {
		return func(c *actor.Context) {
			if match(c.Message()) && done.CompareAndSwap(false, true) {
				panic("test: replica actor crash")
			}
			next(c)
		}
	}
}

func waitRestart(t *testing.T, r *testRegistry, events <-chan actor.ActorRestartedEvent) actor.ActorRestartedEvent {
	t.Helper()
	select {
	case ev := <-events:
		require.True(t, strings.HasPrefix(ev.PID.ID, r.pid.ID+"/replica/"), "restarted actor %s is not a replica actor", ev.PID.ID)
		return ev
	case <-time.After(waitLimit):
		t.Fatalf("no ActorRestartedEvent within %v", waitLimit)
		return actor.ActorRestartedEvent{}
	}
}

// TestReplicaActorPanicKeepsRegistrationAndState: a replica actor that panics is restarted by
// hollywood; its replica stays registered and routable, its latency window survives, and its health
// loop keeps running.
func TestReplicaActorPanicKeepsRegistrationAndState(t *testing.T) {
	p := newFakeProbe(answerHealthy)
	var armed atomic.Bool
	crashOn := func(m any) bool { return armed.Load() && actors.IsProbeTick(m) }
	r := startRegistry(t, actors.Config{
		HealthInterval:    5 * time.Millisecond,
		HealthFailures:    2,
		Probe:             p.probe,
		ReplicaMiddleware: []actor.MiddlewareFunc{panicOnce(crashOn)},
	})
	events := watchRestarts(t, r)
	const url = "http://a"
	reg := messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid, Speed: 2}
	r.mustRegister(reg, messages.HealthHealthy)

	r.Release(r.mustAcquire(testModel), messages.OK, time.Second)
	require.Len(t, r.mustReplica(url, false).Latency, 1)

	// The replica actor panics on its next probe tick; hollywood drops that message and restarts it.
	armed.Store(true)
	ev := waitRestart(t, r, events)
	require.EqualValues(t, 1, ev.Restarts)

	s := r.mustReplica(url, false)
	require.Equal(t, reg, s.Registration)
	require.Equal(t, messages.HealthHealthy, s.Health)
	require.True(t, s.Routable)
	require.Equal(t, 0, s.Unfinished)

	// The window is the registry's: the restart did not touch it.
	r.Release(r.mustAcquire(testModel), messages.OK, 3*time.Second)
	require.Equal(t, []float64{1, 3}, r.mustReplica(url, false).Latency)

	// The health loop still runs and still acts: it probes, and failures evict.
	n := p.calls(url)
	waitFor(t, "probes after the restart", func() bool { return p.calls(url) >= n+2 })
	p.set(answerFail)
	waitFor(t, "eviction by the restarted actor's health loop", func() bool {
		s, ok := r.replica(url, true)
		return ok && s.Health == messages.HealthDown
	})
	require.Equal(t, 1, r.replicaActors(10), "the restart must not add an actor")
}

// TestReplicaActorPanicKeepsFailureCount: the consecutive-failure count lives in the producer's
// closure, so a restart between two failed probes does not reset it.
func TestReplicaActorPanicKeepsFailureCount(t *testing.T) {
	p := newStepProbe()
	var armed atomic.Bool
	crashOn := func(m any) bool { return armed.Load() && actors.IsProbeTick(m) }
	r := startRegistry(t, actors.Config{
		HealthInterval:    time.Millisecond,
		HealthFailures:    2,
		Probe:             p.probe,
		ReplicaMiddleware: []actor.MiddlewareFunc{panicOnce(crashOn)},
	})
	events := watchRestarts(t, r)
	const url = "http://a"
	r.mustRegister(messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, messages.HealthHealthy)

	c := p.next(t)
	c = p.step(t, c, answerFail)
	require.Equal(t, 1, r.mustReplica(url, false).Failures)

	armed.Store(true) // the next probe tick panics
	waitRestart(t, r, events)
	// The probe in flight belonged to the crashed instance, whose context was cancelled: the
	// restarted instance probes afresh.
	c = p.next(t)
	c = p.step(t, c, answerFail)
	s := r.mustReplica(url, true)
	require.Equal(t, messages.HealthDown, s.Health, "1 failure before the crash + 1 after = the threshold of 2")
	c.reply(answerFail)
}

// TestReplicaActorPanicInStartedIsRestarted: a replica middleware that panics while the actor
// starts must not wedge the registration (the restart delivers Stopped to an instance that never
// ran Started).
func TestReplicaActorPanicInStartedIsRestarted(t *testing.T) {
	p := newFakeProbe(answerHealthy)
	isStarted := func(m any) bool { _, ok := m.(actor.Started); return ok }
	r := startRegistry(t, actors.Config{
		HealthInterval:    5 * time.Millisecond,
		Probe:             p.probe,
		ReplicaMiddleware: []actor.MiddlewareFunc{panicOnce(isStarted)},
	})
	events := watchRestarts(t, r)
	const url = "http://a"
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	require.NoError(t, r.Register(ctx, messages.Registration{URL: url, Models: []string{testModel}, Role: messages.Hybrid}, ""))
	waitRestart(t, r, events)
	waitFor(t, "the replica to be probed healthy", func() bool {
		s, ok := r.replica(url, false)
		return ok && s.Routable
	})
	r.Release(r.mustAcquire(testModel), messages.OK, time.Millisecond)
	require.Equal(t, 1, r.replicaActors(10))
}
