package actors

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/actors/routing"
	"github.com/lmproxy/lmproxy/messages"
)

// stopTimeout bounds the wait for one actor to stop, so a stuck child can never hang a removal.
const stopTimeout = 5 * time.Second

// entry is the registry's record of one replica: its registration, the authoritative in-flight
// count, the passive-health breaker, and a mirror of what its replica actor reports.
type entry struct {
	reg        messages.Registration
	gen        uint64
	pid        *actor.PID
	unfinished int
	health     messages.Health
	failures   int
	window     []float64 // the last latencyWindow successful request durations, seconds, oldest first
	downSince  time.Time

	circuitOpen bool
	openUntil   time.Time
	// trialUntil: a half-open trial request is in flight. Only an outcome that judges the replica
	// ends it early: a lease does not say whether it was the trial, and a neutral release (the client
	// left, a timeout) may be an older request's, so the trial otherwise blocks others for one
	// cool-down.
	trialUntil time.Time
}

// registryState is the registry's memory; it lives in the producer's closure so that even a restart
// of the registry actor loses no registration and no in-flight count.
//
// mu guards all of it. Request goroutines take it to acquire and release (Registry in client.go);
// the actor takes it to change membership and health and to read them. Only the actor changes
// membership and health (entries, byModel, nextGen; an entry's reg, gen, pid, health, failures,
// downSince), so what it read under the lock still holds after it unlocks to stop or spawn an actor
// or to run a callback. Nothing slow or re-entrant runs under the lock: no actor is waited for or
// spawned, no callback runs, nothing is logged.
type registryState struct {
	mu      sync.Mutex
	entries map[string]*entry
	byModel map[string][]*entry
	nextGen uint64
	cands   []routing.Candidate // reused for every selection: no allocation per request
	picks   []*entry
}

// router makes the routing decisions over the registry's state: choose a replica, count a request on
// it, end the request. Its callers hold st.mu.
type router struct {
	st  *registryState
	cfg *Config
}

// registry is the actor that owns the set of replicas and their health: it applies registrations,
// removals, health reports and expiries. Routing does not go through it (see Registry).
type registry struct {
	router
}

// SpawnRegistry starts a registry actor with cfg on e and returns the handle that routes over its
// state.
func SpawnRegistry(e *actor.Engine, cfg Config) *Registry {
	c := cfg.withDefaults()
	rt := router{st: &registryState{entries: map[string]*entry{}, byModel: map[string][]*entry{}}, cfg: &c}
	opts := append(restartOpts(), actor.WithMiddleware(recoverMiddleware(c.Log)), actor.WithInboxSize(4096))
	pid := e.Spawn(func() actor.Receiver { return &registry{router: rt} }, "registry", opts...)
	return &Registry{engine: e, pid: pid, rt: rt}
}

// StopRegistry stops the registry and every replica actor, waiting at most a few seconds.
func StopRegistry(e *actor.Engine, pid *actor.PID) {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	<-e.PoisonCtx(ctx, pid).Done()
}

// Receive handles the registry's messages.
func (g *registry) Receive(c *actor.Context) {
	switch m := c.Message().(type) {
	case messages.Register:
		g.register(c, m)
	case messages.Deregister:
		ok := g.remove(c, m.URL, "removed")
		if m.Reply != nil {
			m.Reply <- ok
		}
	case messages.StatusQuery:
		m.Reply <- g.status(m.IncludeDown)
	case messages.HealthReport:
		if g.healthChanged(c, m) {
			g.cfg.OnLeave(m.URL)
		}
	case messages.ReplicaExpired:
		if g.fromCurrentActor(c, m.URL) {
			g.remove(c, m.URL, "expired from the down list")
		}
	}
}

// fromActor returns the entry of url if the message came from its current replica actor: a report
// from the actor of an earlier registration of the same URL is stale. The caller holds st.mu.
func (g *registry) fromActor(c *actor.Context, url string) *entry {
	e := g.st.entries[url]
	if e == nil || c.Sender() == nil || !c.Sender().Equals(e.pid) {
		return nil
	}
	return e
}

// fromCurrentActor reports whether the message came from url's current replica actor.
func (g *registry) fromCurrentActor(c *actor.Context, url string) bool {
	g.st.mu.Lock()
	defer g.st.mu.Unlock()
	return g.fromActor(c, url) != nil
}

// acquire selects a replica and counts the request on it, in one step.
func (rt router) acquire(model string, role messages.Role, not string) messages.Acquired {
	e, status := rt.choose(model, role, not)
	if e == nil {
		return messages.Acquired{Status: status}
	}
	return messages.Acquired{Lease: rt.take(e)}
}

// acquirePair selects a Prefill and a Decode replica for one DistServe request: both or neither.
func (rt router) acquirePair(model string, noPrefill bool) messages.AcquiredPair {
	var p *entry
	if !noPrefill {
		var status messages.AcquireStatus
		if p, status = rt.choose(model, messages.Prefill, ""); p == nil {
			return messages.AcquiredPair{Status: status, Missing: messages.Prefill}
		}
	}
	d, status := rt.choose(model, messages.Decode, "")
	if d == nil {
		return messages.AcquiredPair{Status: status, Missing: messages.Decode}
	}
	out := messages.AcquiredPair{Decode: rt.take(d)}
	if p != nil {
		out.Prefill = rt.take(p)
	}
	return out
}

// choose filters the routable replicas of role serving model (leaving out not) and runs the strategy.
func (rt router) choose(model string, role messages.Role, not string) (*entry, messages.AcquireStatus) {
	all := rt.st.byModel[model]
	if len(all) == 0 {
		return nil, messages.UnknownModel
	}
	var now time.Time
	cands, picks := rt.st.cands[:0], rt.st.picks[:0]
	for _, e := range all {
		if e.reg.Role != role || e.health != messages.HealthHealthy || e.reg.URL == not {
			continue
		}
		if e.circuitOpen {
			if now.IsZero() {
				now = time.Now()
			}
			if now.Before(e.trialUntil) || now.Before(e.openUntil) {
				continue
			}
		}
		cands = append(cands, routing.Candidate{URL: e.reg.URL, Unfinished: e.unfinished, Speed: e.reg.Speed, Latency: e.window})
		picks = append(picks, e)
	}
	rt.st.cands, rt.st.picks = cands, picks
	if len(cands) == 0 {
		return nil, messages.NoRoutableReplica
	}
	return picks[rt.cfg.Strategy.Select(cands)], messages.AcquireOK
}

// take counts one request in flight on e.
func (rt router) take(e *entry) messages.Lease {
	e.unfinished++
	if e.circuitOpen {
		e.trialUntil = time.Now().Add(rt.cfg.CircuitCooldown)
	}
	return messages.Lease{URL: e.reg.URL, Gen: e.gen}
}

// releaseNote is what one release has to log, as a set of flags: the caller logs it once it has
// unlocked, so that no request waits on the log's writer.
type releaseNote uint8

const (
	noteMiscount      releaseNote = 1 << iota // a release without a matching acquire
	noteCircuitClosed                         // the replica answered again
	noteCircuitOpened                         // the replica refused a connection
)

// release ends one request: the in-flight count falls, the latency window and the breaker learn the
// outcome. The breaker opens on a refused connection only, the one failure a client's request
// cannot cause: LMDeploy answers 500 to a single bad request, and one long generation can outlast
// --upstream-timeout, so if 5xx answers, broken answers or timeouts opened it, one client could take
// every replica out of routing. A replica that is really down is evicted by its health probes
// (SPEC §5).
func (rt router) release(l messages.Lease, o messages.Outcome, elapsed time.Duration) releaseNote {
	e := rt.st.entries[l.URL]
	if e == nil || e.gen != l.Gen {
		return 0 // the registration ended; its count went with it
	}
	var note releaseNote
	if e.unfinished == 0 {
		note |= noteMiscount
	} else {
		e.unfinished--
	}
	switch o {
	case messages.OK, messages.Rejected, messages.UpstreamError:
		// The replica took the connection (an UpstreamError is a 5xx or an answer broken on the
		// way): it is reachable, which is all the circuit judges.
		e.trialUntil = time.Time{}
		if e.circuitOpen {
			e.circuitOpen = false
			note |= noteCircuitClosed
		}
		if o == messages.OK {
			e.recordLatency(elapsed)
		}
	case messages.DialError:
		if !e.circuitOpen {
			note |= noteCircuitOpened
		}
		e.circuitOpen, e.openUntil, e.trialUntil = true, time.Now().Add(rt.cfg.CircuitCooldown), time.Time{}
	}
	return note
}

// log writes what a release of url with outcome o noted.
func (n releaseNote) log(log logrus.FieldLogger, url string, o messages.Outcome) {
	if n&noteMiscount != 0 {
		log.WithField("replica", url).Error("release without a matching acquire: in-flight count kept at 0")
	}
	if n&noteCircuitClosed != 0 {
		log.WithField("replica", url).Info("circuit closed: the replica answers again")
	}
	if n&noteCircuitOpened != 0 {
		log.WithFields(logrus.Fields{"replica": url, "outcome": o.String()}).
			Warn("circuit opened: the replica refused a connection")
	}
}

// register adds a replica or replaces its registration, keeping its counters. A replacement first
// stops the old replica actor, unlocked: requests keep routing to the old registration meanwhile.
func (g *registry) register(c *actor.Context, m messages.Register) {
	if m.Health == "" {
		m.Health = messages.HealthUnknown
	}
	fields := logrus.Fields{"replica": m.Reg.URL, "role": m.Reg.Role.String(), "models": m.Reg.Models}
	if old := g.replicaActor(m.Reg.URL); old != nil {
		g.stopActor(c, old)
		g.cfg.Log.WithFields(fields).Info("replica registration replaced")
		g.cfg.OnLeave(m.Reg.URL)
	} else {
		g.cfg.Log.WithFields(fields).Info("replica added")
	}
	id, regs := g.upsert(m)
	pid := c.SpawnChild(newReplica(g.cfg, c.PID(), m.Reg.URL, m.Health), "replica",
		append(restartOpts(), actor.WithID(strconv.FormatUint(id, 10)),
			actor.WithMiddleware(g.cfg.ReplicaMiddleware...))...)
	g.setReplicaActor(m.Reg.URL, pid)
	g.cfg.OnChange(regs)
	if m.Reply != nil {
		close(m.Reply)
	}
}

// replicaActor returns the replica actor of url, nil if url is not registered.
func (g *registry) replicaActor(url string) *actor.PID {
	g.st.mu.Lock()
	defer g.st.mu.Unlock()
	if e := g.st.entries[url]; e != nil {
		return e.pid
	}
	return nil
}

// upsert applies m to the state in one step, so no request sees the new registration under the old
// model index: it adds or updates the entry and reindexes. It returns the ID for the new replica
// actor and the registrations for OnChange.
func (g *registry) upsert(m messages.Register) (actorID uint64, regs []messages.Registration) {
	g.st.mu.Lock()
	defer g.st.mu.Unlock()
	e := g.st.entries[m.Reg.URL]
	if e == nil {
		g.st.nextGen++
		e = &entry{gen: g.st.nextGen}
		g.st.entries[m.Reg.URL] = e
	}
	e.reg = m.Reg
	e.health, e.failures, e.downSince = m.Health, 0, time.Time{}
	// A new registration starts with a closed circuit, as it starts with the health it was given:
	// an add has just probed the replica, and SPEC §4 makes it routable at once.
	e.circuitOpen, e.openUntil, e.trialUntil = false, time.Time{}, time.Time{}
	g.st.nextGen++ // actor IDs must never repeat: hollywood silently reuses a live actor with the same ID
	return g.st.nextGen, g.reindex()
}

// setReplicaActor records pid as the replica actor of url, whose reports are the current ones.
func (g *registry) setReplicaActor(url string, pid *actor.PID) {
	g.st.mu.Lock()
	defer g.st.mu.Unlock()
	g.st.entries[url].pid = pid
}

// remove forgets url and stops its replica actor; it reports whether url was registered.
func (g *registry) remove(c *actor.Context, url, why string) bool {
	pid, unfinished, regs, ok := g.forget(url)
	if !ok {
		return false
	}
	g.cfg.OnLeave(url)
	g.stopActor(c, pid)
	g.cfg.OnChange(regs)
	g.cfg.Log.WithFields(logrus.Fields{"replica": url, "unfinished": unfinished}).Info("replica " + why)
	return true
}

// forget takes url out of the state in one step, so no request is routed to it from then on and its
// late releases are ignored. It returns url's replica actor, its in-flight count, the registrations
// for OnChange, and whether url was registered.
func (g *registry) forget(url string) (pid *actor.PID, unfinished int, regs []messages.Registration, ok bool) {
	g.st.mu.Lock()
	defer g.st.mu.Unlock()
	e := g.st.entries[url]
	if e == nil {
		return nil, 0, nil, false
	}
	delete(g.st.entries, url)
	return e.pid, e.unfinished, g.reindex(), true
}

// stopActor stops one replica actor and waits for it, once: poisoning a PID twice, or a parent
// poisoning a child that is still stopping, hangs in hollywood v1.0.5. The caller must not hold st.mu.
func (g *registry) stopActor(c *actor.Context, pid *actor.PID) {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	<-c.Engine().PoisonCtx(ctx, pid).Done()
}

// reindex rebuilds the model index and returns the new set of registrations, sorted by URL, for
// OnChange. The caller holds st.mu.
func (g *registry) reindex() []messages.Registration {
	byModel := map[string][]*entry{}
	regs := make([]messages.Registration, 0, len(g.st.entries))
	for _, e := range g.st.entries {
		for _, m := range e.reg.Models {
			byModel[m] = append(byModel[m], e)
		}
		regs = append(regs, e.reg)
	}
	g.st.byModel = byModel
	slices.SortFunc(regs, func(a, b messages.Registration) int { return cmp.Compare(a.URL, b.URL) })
	return regs
}

// healthChanged applies a replica actor's report to the mirror used for routing. It reports whether
// the replica just went down, for OnLeave.
func (g *registry) healthChanged(c *actor.Context, m messages.HealthReport) (wentDown bool) {
	g.st.mu.Lock()
	defer g.st.mu.Unlock()
	e := g.fromActor(c, m.URL)
	if e == nil {
		return false
	}
	if m.Health == messages.HealthDown && e.health != messages.HealthDown {
		e.downSince, wentDown = time.Now(), true
	} else if m.Health != messages.HealthDown {
		e.downSince = time.Time{}
	}
	e.health, e.failures = m.Health, m.Failures
	return wentDown
}

// status lists the registered replicas sorted by URL; down ones only with includeDown.
func (g *registry) status(includeDown bool) []messages.ReplicaStatus {
	g.st.mu.Lock()
	defer g.st.mu.Unlock()
	now := time.Now()
	out := make([]messages.ReplicaStatus, 0, len(g.st.entries))
	for _, e := range g.st.entries {
		if e.health == messages.HealthDown && !includeDown {
			continue
		}
		circuit := messages.CircuitClosed
		if e.circuitOpen {
			circuit = messages.CircuitOpen
			if !now.Before(e.openUntil) {
				circuit = messages.CircuitHalfOpen
			}
		}
		reg := e.reg
		reg.Models = slices.Clone(reg.Models)
		out = append(out, messages.ReplicaStatus{
			Registration: reg,
			Health:       e.health,
			Routable:     e.health == messages.HealthHealthy && circuit != messages.CircuitOpen && !(now.Before(e.trialUntil) && circuit == messages.CircuitHalfOpen),
			Unfinished:   e.unfinished,
			Latency:      append([]float64{}, e.window...),
			Failures:     e.failures,
			Circuit:      circuit,
			DownSince:    e.downSince,
		})
	}
	slices.SortFunc(out, func(a, b messages.ReplicaStatus) int { return cmp.Compare(a.URL, b.URL) })
	return out
}

// recordLatency adds one successful request's duration to the window, in place: the window is
// replaced, never shared, when status copies it out.
func (e *entry) recordLatency(d time.Duration) {
	w := e.window
	if len(w) == latencyWindow {
		copy(w, w[1:])
		w = w[:latencyWindow-1]
	}
	e.window = append(w, d.Seconds())
}
