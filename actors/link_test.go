package actors_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// linkWait bounds every wait of the link tests; their conditions hold within milliseconds.
const linkWait = 5 * time.Second

var pairAB = messages.Pair{Prefill: "http://p", Decode: "http://d"}

// fakeLinkIO records the links' network calls. Connect waits for gate when one is set, and fails with
// the errors queued in failures first.
type fakeLinkIO struct {
	connects atomic.Int64
	gate     chan struct{}
	started  chan struct{} // one token per Connect that began

	mu       sync.Mutex
	failures []error
	drops    []messages.Pair
	frees    []int64
	freeErr  error
}

func newFakeLinkIO() *fakeLinkIO { return &fakeLinkIO{started: make(chan struct{}, 64)} }

func (f *fakeLinkIO) Connect(ctx context.Context, p messages.Pair) error {
	f.connects.Add(1)
	f.started <- struct{}{}
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.failures) > 0 {
		err := f.failures[0]
		f.failures = f.failures[1:]
		return err
	}
	return nil
}

func (f *fakeLinkIO) Drop(_ context.Context, p messages.Pair) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drops = append(f.drops, p)
	return nil
}

func (f *fakeLinkIO) FreeCache(_ context.Context, prefill string, session int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if prefill != pairAB.Prefill {
		return errors.New("unexpected prefill " + prefill)
	}
	if f.freeErr != nil {
		return f.freeErr
	}
	f.frees = append(f.frees, session)
	return nil
}

// freed returns the freed sessions, sorted; call it after stop, which waits for every free.
func (f *fakeLinkIO) freed() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(slices.Values(f.frees))
}

func (f *fakeLinkIO) dropped() []messages.Pair {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.drops)
}

// startLinks spawns a link manager over io on its own engine. The returned stop stops it once, waiting
// for all its network calls; the test's cleanup calls it too.
func startLinks(t *testing.T, lio actors.LinkIO, log logrus.FieldLogger) (*actors.Links, func()) {
	t.Helper()
	e, err := actor.NewEngine(actor.NewEngineConfig())
	require.NoError(t, err)
	links := actors.SpawnLinks(e, actors.LinksConfig{IO: lio, Log: log})
	var once sync.Once
	stop := func() { once.Do(links.Stop) }
	t.Cleanup(stop)
	return links, stop
}

func ensure(t *testing.T, links *actors.Links, p messages.Pair) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), linkWait)
	defer cancel()
	return links.Ensure(ctx, p)
}

func collect(t *testing.T, links *actors.Links) messages.GarbageCollected {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), linkWait)
	defer cancel()
	res, err := links.CollectGarbage(ctx)
	require.NoError(t, err)
	return res
}

// Requests that arrive while a pair connects wait for that one connect instead of starting their own;
// later requests find the link connected.
func TestLinkConnectsOnceForConcurrentRequests(t *testing.T) {
	lio := newFakeLinkIO()
	lio.gate = make(chan struct{})
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	links, _ := startLinks(t, lio, log)

	const n = 20
	errs := make(chan error, n)
	for range n {
		go func() { errs <- ensure(t, links, pairAB) }()
	}
	waiting := func() int {
		k := 0
		for _, e := range hook.AllEntries() {
			if e.Message == "request waits for the DistServe link's connect in flight" {
				k++
			}
		}
		return k
	}
	require.Eventually(t, func() bool { return waiting() == n-1 }, linkWait, time.Millisecond,
		"one request starts the connect, the others wait for it")
	close(lio.gate)
	for range n {
		require.NoError(t, <-errs)
	}
	require.NoError(t, ensure(t, links, pairAB))
	require.EqualValues(t, 1, lio.connects.Load())
}

// A failed connect answers its waiters with the error and leaves the link disconnected: the next
// request connects again.
func TestLinkRetriesAfterAFailedConnect(t *testing.T) {
	lio := newFakeLinkIO()
	lio.failures = []error{errors.New("p2p_connect answered HTTP 500")}
	links, _ := startLinks(t, lio, nil)
	require.EqualError(t, ensure(t, links, pairAB), "p2p_connect answered HTTP 500")
	require.NoError(t, ensure(t, links, pairAB))
	require.NoError(t, ensure(t, links, pairAB))
	require.EqualValues(t, 2, lio.connects.Load())
}

// When a replica of a pair leaves, the link is dropped (both replicas are told) and the next request
// connects afresh; a replica of no pair changes nothing.
func TestLinkIsDroppedWhenAReplicaLeaves(t *testing.T) {
	for _, gone := range []string{pairAB.Prefill, pairAB.Decode} {
		t.Run(gone, func(t *testing.T) {
			lio := newFakeLinkIO()
			links, stop := startLinks(t, lio, nil)
			require.NoError(t, ensure(t, links, pairAB))
			links.ReplicaLeft("http://other")
			require.NoError(t, ensure(t, links, pairAB))
			require.EqualValues(t, 1, lio.connects.Load(), "another replica leaving keeps the link")

			links.ReplicaLeft(gone)
			require.NoError(t, ensure(t, links, pairAB))
			require.EqualValues(t, 2, lio.connects.Load())
			stop()
			require.Equal(t, []messages.Pair{pairAB}, lio.dropped())
		})
	}
}

// Requests waiting on a connect whose replica leaves get an error at once, and the connect is cancelled.
func TestLinkDroppedWhileConnecting(t *testing.T) {
	lio := newFakeLinkIO()
	lio.gate = make(chan struct{}) // never opened
	links, stop := startLinks(t, lio, nil)
	errs := make(chan error, 1)
	go func() { errs <- ensure(t, links, pairAB) }()
	<-lio.started
	links.ReplicaLeft(pairAB.Decode)
	require.ErrorContains(t, <-errs, "dropped")
	stop() // returns only once the cancelled connect has ended
	require.Equal(t, []messages.Pair{pairAB}, lio.dropped(), "a link being connected is dropped on both sides")
}

// A session's cache stays on the Prefill replica only while its Decode replica may still pull it:
// a complete answer, or a client that left a Decode replica that is still here, leaves it to the
// Decode replica; a failed or unsent decode frees it at once; a session whose Decode replica left
// mid-answer waits for gc, unless its answer then completes. gc frees each session once.
func TestLinkShelf(t *testing.T) {
	lio := newFakeLinkIO()
	links, stop := startLinks(t, lio, nil)
	other := messages.Pair{Prefill: pairAB.Prefill, Decode: "http://d2"}
	for s := int64(1); s <= 9; s++ {
		p := pairAB
		if s >= 7 {
			p = other
		}
		links.Shelve(p, s)
	}
	links.Unshelve(pairAB, 1, messages.OK)
	links.Unshelve(pairAB, 2, messages.ClientGone)
	links.Unshelve(pairAB, 3, messages.UpstreamError) // freed now
	links.Unshelve(pairAB, 4, messages.Unused)        // freed now
	links.ReplicaLeft(pairAB.Decode)                  // 5 and 6 are left for gc
	links.Unshelve(pairAB, 5, messages.OK)            // pulled after all
	links.Unshelve(pairAB, 6, messages.ClientGone)    // freed now: its Decode replica is gone
	links.Unshelve(other, 7, messages.OK)
	require.Equal(t, messages.GarbageCollected{}, collect(t, links), "the other pair's sessions are not gc's")

	links.ReplicaLeft(other.Decode) // 8 and 9 are left for gc
	links.Unshelve(other, 9, messages.Timeout)
	require.Equal(t, messages.GarbageCollected{Freed: 1}, collect(t, links))
	require.Equal(t, messages.GarbageCollected{}, collect(t, links), "once")
	links.Unshelve(other, 8, messages.UpstreamError) // gc freed it already
	stop()
	require.Equal(t, []int64{3, 4, 6, 8, 9}, lio.freed())
}

// A session whose Decode replica could not be reached moves to the pair of the Decode replica that
// takes it instead: its cache is not freed by the move, nor by gc when the first Decode replica left
// before the move, and it ends on its new pair as any session does.
func TestLinkReshelve(t *testing.T) {
	lio := newFakeLinkIO()
	links, stop := startLinks(t, lio, nil)
	other := messages.Pair{Prefill: pairAB.Prefill, Decode: "http://d2"}
	links.Shelve(pairAB, 1)
	links.Shelve(pairAB, 2)
	links.Reshelve(pairAB, other, 1)
	links.ReplicaLeft(pairAB.Decode) // 2 is left for gc…
	links.Reshelve(pairAB, other, 2) // …and taken back
	require.Equal(t, messages.GarbageCollected{}, collect(t, links), "nothing is left for gc")
	links.Unshelve(other, 1, messages.OK)
	links.Unshelve(other, 2, messages.Unused) // freed now
	stop()
	require.Equal(t, []int64{2}, lio.freed())
}

// gc forgets the sessions it could not free, and says which.
func TestLinkGCReportsFailedFrees(t *testing.T) {
	lio := newFakeLinkIO()
	lio.freeErr = errors.New("connection refused")
	links, _ := startLinks(t, lio, nil)
	links.Shelve(pairAB, 4)
	links.ReplicaLeft(pairAB.Decode)
	require.Equal(t, messages.GarbageCollected{Failed: []string{"http://p session 4: connection refused"}}, collect(t, links))
	require.Equal(t, messages.GarbageCollected{}, collect(t, links))
}

// The registry tells OnLeave of every replica that leaves routing for good or for a while: removed,
// re-registered (a restarted engine), evicted to the down list.
func TestRegistryReportsReplicasThatLeave(t *testing.T) {
	e, err := actor.NewEngine(actor.NewEngineConfig())
	require.NoError(t, err)
	left := make(chan string, 8)
	var failing atomic.Bool
	reg := actors.SpawnRegistry(e, actors.Config{
		HealthInterval: 5 * time.Millisecond, HealthFailures: 1,
		Probe: func(ctx context.Context, url string) (messages.Health, error) {
			if failing.Load() {
				return "", errors.New("refused")
			}
			return messages.HealthHealthy, nil
		},
		OnLeave: func(url string) { left <- url },
	})
	defer actors.StopRegistry(e, reg.PID())
	ctx, cancel := context.WithTimeout(context.Background(), linkWait)
	defer cancel()
	next := func() string {
		select {
		case u := <-left:
			return u
		case <-ctx.Done():
			t.Fatal("OnLeave was not called")
			return ""
		}
	}
	d := messages.Registration{URL: "http://d", Models: []string{"m"}, Role: messages.Decode}
	require.NoError(t, reg.Register(ctx, d, messages.HealthHealthy))
	require.NoError(t, reg.Register(ctx, d, messages.HealthHealthy))
	require.Equal(t, "http://d", next(), "re-registered")
	ok, err := reg.Deregister(ctx, "http://d")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "http://d", next(), "removed")

	require.NoError(t, reg.Register(ctx, d, messages.HealthHealthy))
	failing.Store(true)
	require.Equal(t, "http://d", next(), "evicted to the down list")
	require.Empty(t, left, "once per departure")
}
