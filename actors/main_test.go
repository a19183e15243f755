package actors_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// TestMain fails the package if any test leaves a goroutine behind: every test stops its registry
// with StopRegistry, and hollywood's idle actors (the engine's event stream) own no goroutine.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitLimit bounds every wait of these tests; conditions normally hold within milliseconds.
const waitLimit = 10 * time.Second

// testModel is the model every test replica serves unless a test says otherwise.
const testModel = "m"

// testRegistry is a registry actor on its own engine, with the handle the HTTP layer uses and a
// hook that records what the registry and its replica actors log at Info and above.
type testRegistry struct {
	*actors.Registry
	t    *testing.T
	e    *actor.Engine
	pid  *actor.PID
	logs *logtest.Hook
	once sync.Once
}

// startRegistry spawns a registry with cfg on a fresh engine and stops it when the test ends.
func startRegistry(t *testing.T, cfg actors.Config) *testRegistry {
	t.Helper()
	e, err := actor.NewEngine(actor.NewEngineConfig())
	require.NoError(t, err)
	log, hook := logtest.NewNullLogger()
	if cfg.Log == nil {
		cfg.Log = log
	}
	reg := actors.SpawnRegistry(e, cfg)
	r := &testRegistry{Registry: reg, t: t, e: e, pid: reg.PID(), logs: hook}
	t.Cleanup(r.stop)
	return r
}

// stop stops the registry and its replica actors once, and fails the test if the registry actor is
// still registered afterwards (StopRegistry gave up waiting).
func (r *testRegistry) stop() {
	r.once.Do(func() {
		actors.StopRegistry(r.e, r.pid)
		if r.e.Registry.GetPID("registry", strings.TrimPrefix(r.pid.ID, "registry/")) != nil {
			r.t.Errorf("registry actor %s still running after StopRegistry", r.pid.ID)
		}
	})
}

// replicaActors counts the live replica actors whose IDs are at most maxID in the engine's registry
// of actors (the registry names them with small increasing numbers).
func (r *testRegistry) replicaActors(maxID int) int {
	n := 0
	for id := 1; id <= maxID; id++ {
		if r.e.Registry.GetPID(r.pid.ID+"/replica", strconv.Itoa(id)) != nil {
			n++
		}
	}
	return n
}

func (r *testRegistry) mustRegister(reg messages.Registration, h messages.Health) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	require.NoError(r.t, r.Register(ctx, reg, h))
}

func (r *testRegistry) mustDeregister(url string) bool {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	ok, err := r.Deregister(ctx, url)
	require.NoError(r.t, err)
	return ok
}

func (r *testRegistry) status(includeDown bool) []messages.ReplicaStatus {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	st, err := r.Status(ctx, includeDown)
	require.NoError(r.t, err)
	return st
}

// replica returns the status of url, and whether Status listed it.
func (r *testRegistry) replica(url string, includeDown bool) (messages.ReplicaStatus, bool) {
	r.t.Helper()
	for _, s := range r.status(includeDown) {
		if s.URL == url {
			return s, true
		}
	}
	return messages.ReplicaStatus{}, false
}

func (r *testRegistry) mustReplica(url string, includeDown bool) messages.ReplicaStatus {
	r.t.Helper()
	s, ok := r.replica(url, includeDown)
	require.Truef(r.t, ok, "replica %s is not listed (includeDown=%v)", url, includeDown)
	return s
}

// acquire asks for a Hybrid replica of model and fails the test if the registry does not answer.
func (r *testRegistry) acquire(model string) messages.Acquired {
	r.t.Helper()
	a, err := r.Acquire(context.Background(), model, messages.Hybrid, "")
	require.NoError(r.t, err)
	return a
}

func (r *testRegistry) mustAcquire(model string) messages.Lease {
	r.t.Helper()
	a := r.acquire(model)
	require.Equal(r.t, messages.AcquireOK, a.Status, "acquire %s", model)
	return a.Lease
}

// requireNoMiscount fails the test if the registry ever saw a release without a matching acquire
// (it clamps the count at 0 and logs an error, which would hide a negative count).
func (r *testRegistry) requireNoMiscount() {
	r.t.Helper()
	for _, e := range r.logs.AllEntries() {
		if e.Level <= logrus.ErrorLevel {
			r.t.Errorf("registry logged an error: %s %v", e.Message, e.Data)
		}
	}
}

// waitFor polls cond until it holds, failing the test after waitLimit.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// probeAnswer is what a fake probe answers: a serving state, an error, or no answer until its
// context ends.
type probeAnswer struct {
	health messages.Health
	err    error
	hang   bool
}

var (
	answerHealthy      = probeAnswer{health: messages.HealthHealthy}
	answerSleeping     = probeAnswer{health: messages.HealthSleeping}
	answerInitializing = probeAnswer{health: messages.HealthInitializing}
	answerFail         = probeAnswer{err: errors.New("fake probe: replica reports unhealthy")}
)

// fakeProbe answers every probe with the answer the test last set, and records when each URL was
// probed.
type fakeProbe struct {
	mu     sync.Mutex
	answer probeAnswer
	times  map[string][]time.Time
}

func newFakeProbe(a probeAnswer) *fakeProbe {
	return &fakeProbe{answer: a, times: map[string][]time.Time{}}
}

func (p *fakeProbe) set(a probeAnswer) {
	p.mu.Lock()
	p.answer = a
	p.mu.Unlock()
}

// calls returns how many probes of url have started.
func (p *fakeProbe) calls(url string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.times[url])
}

// started returns when each probe of url started, oldest first.
func (p *fakeProbe) started(url string) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.times[url]...)
}

func (p *fakeProbe) probe(ctx context.Context, url string) (messages.Health, error) {
	p.mu.Lock()
	p.times[url] = append(p.times[url], time.Now())
	a := p.answer
	p.mu.Unlock()
	if a.hang {
		<-ctx.Done()
		return "", ctx.Err()
	}
	return a.health, a.err
}

// stepProbe hands every probe to the test, which answers them one by one: the replica actor sends
// the next probe only after it applied the previous answer and reported it to the registry, so a
// test that holds the next probe sees the registry up to date.
type stepProbe struct {
	calls chan probeCall
}

// probeCall is one probe waiting for the test's answer.
type probeCall struct {
	url    string
	answer chan<- probeAnswer
}

func newStepProbe() *stepProbe {
	return &stepProbe{calls: make(chan probeCall)}
}

func (p *stepProbe) probe(ctx context.Context, url string) (messages.Health, error) {
	answer := make(chan probeAnswer, 1)
	select {
	case p.calls <- probeCall{url: url, answer: answer}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	select {
	case a := <-answer:
		return a.health, a.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// next waits for the next probe to start.
func (p *stepProbe) next(t *testing.T) probeCall {
	t.Helper()
	select {
	case c := <-p.calls:
		return c
	case <-time.After(waitLimit):
		t.Fatalf("no health probe within %v", waitLimit)
		return probeCall{}
	}
}

// reply answers the probe.
func (c probeCall) reply(a probeAnswer) {
	c.answer <- a
}

// step answers the probe with a and waits for the next one, so the registry has applied a.
func (p *stepProbe) step(t *testing.T, c probeCall, a probeAnswer) probeCall {
	t.Helper()
	c.reply(a)
	return p.next(t)
}
