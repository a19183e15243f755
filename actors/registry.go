package actors

import (
	"cmp"
	"context"
	"slices"
	"strconv"
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

	passiveFails int
	circuitOpen  bool
	openUntil    time.Time
	// trialUntil: a half-open trial request is in flight. Only an outcome that judges the replica
	// ends it early: a lease does not say whether it was the trial, and a neutral release (the client
	// left) may be an older request's, so the trial otherwise blocks others for one cool-down.
	trialUntil time.Time
}

// registryState is the registry's memory; it lives in the producer's closure so that even a restart
// of the registry actor loses no registration and no in-flight count.
type registryState struct {
	entries map[string]*entry
	byModel map[string][]*entry
	nextGen uint64
	cands   []routing.Candidate // reused for every selection: no allocation per request
	picks   []*entry
}

// registry is the actor that owns the set of replicas and answers every routing decision.
type registry struct {
	st  *registryState
	cfg *Config
}

// SpawnRegistry starts a registry actor with cfg on e.
func SpawnRegistry(e *actor.Engine, cfg Config) *actor.PID {
	c := cfg.withDefaults()
	st := &registryState{entries: map[string]*entry{}, byModel: map[string][]*entry{}}
	opts := append(restartOpts(), actor.WithMiddleware(recoverMiddleware(c.Log)), actor.WithInboxSize(4096))
	return e.Spawn(func() actor.Receiver { return &registry{st: st, cfg: &c} }, "registry", opts...)
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
	case messages.Acquire:
		m.Reply <- g.acquire(m.Model, m.Role, m.Not)
	case messages.AcquirePair:
		m.Reply <- g.acquirePair(m)
	case messages.Release:
		g.release(c, m)
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
		if e := g.fromActor(c, m.URL); e != nil {
			g.healthChanged(e, m)
		}
	case messages.ReplicaExpired:
		if g.fromActor(c, m.URL) != nil {
			g.remove(c, m.URL, "expired from the down list")
		}
	}
}

// fromActor returns the entry of url if the message came from its current replica actor: a report
// from the actor of an earlier registration of the same URL is stale.
func (g *registry) fromActor(c *actor.Context, url string) *entry {
	e := g.st.entries[url]
	if e == nil || c.Sender() == nil || !c.Sender().Equals(e.pid) {
		return nil
	}
	return e
}

// acquire selects a replica and counts the request on it, in one step.
func (g *registry) acquire(model string, role messages.Role, not string) messages.Acquired {
	e, status := g.choose(model, role, not)
	if e == nil {
		return messages.Acquired{Status: status}
	}
	return messages.Acquired{Lease: g.take(e)}
}

// acquirePair selects a Prefill and a Decode replica for one DistServe request: both or neither.
func (g *registry) acquirePair(m messages.AcquirePair) messages.AcquiredPair {
	var p *entry
	if !m.NoPrefill {
		var status messages.AcquireStatus
		if p, status = g.choose(m.Model, messages.Prefill, ""); p == nil {
			return messages.AcquiredPair{Status: status, Missing: messages.Prefill}
		}
	}
	d, status := g.choose(m.Model, messages.Decode, "")
	if d == nil {
		return messages.AcquiredPair{Status: status, Missing: messages.Decode}
	}
	out := messages.AcquiredPair{Decode: g.take(d)}
	if p != nil {
		out.Prefill = g.take(p)
	}
	return out
}

// choose filters the routable replicas of role serving model (leaving out not) and runs the strategy.
func (g *registry) choose(model string, role messages.Role, not string) (*entry, messages.AcquireStatus) {
	all := g.st.byModel[model]
	if len(all) == 0 {
		return nil, messages.UnknownModel
	}
	var now time.Time
	cands, picks := g.st.cands[:0], g.st.picks[:0]
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
	g.st.cands, g.st.picks = cands, picks
	if len(cands) == 0 {
		return nil, messages.NoRoutableReplica
	}
	return picks[g.cfg.Strategy.Select(cands)], messages.AcquireOK
}

// take counts one request in flight on e.
func (g *registry) take(e *entry) messages.Lease {
	e.unfinished++
	if e.circuitOpen {
		e.trialUntil = time.Now().Add(g.cfg.CircuitCooldown)
	}
	return messages.Lease{URL: e.reg.URL, Gen: e.gen}
}

// release ends one request: the in-flight count falls, the latency window and the breaker learn the
// outcome.
func (g *registry) release(c *actor.Context, m messages.Release) {
	e := g.st.entries[m.URL]
	if e == nil || e.gen != m.Gen {
		return // the registration ended; its count went with it
	}
	if e.unfinished == 0 {
		g.cfg.Log.WithField("replica", m.URL).Error("release without a matching acquire: in-flight count kept at 0")
	} else {
		e.unfinished--
	}
	switch {
	case m.Outcome == messages.OK || m.Outcome == messages.Rejected:
		e.passiveFails, e.trialUntil = 0, time.Time{}
		if e.circuitOpen {
			e.circuitOpen = false
			g.cfg.Log.WithField("replica", m.URL).Info("circuit closed: the replica answers again")
		}
		if m.Outcome == messages.OK {
			e.recordLatency(m.Elapsed)
		}
	case m.Outcome.CountsAgainstReplica():
		e.passiveFails++
		if m.Outcome == messages.DialError || e.passiveFails >= g.cfg.PassiveFailures || e.circuitOpen {
			if !e.circuitOpen {
				g.cfg.Log.WithFields(logrus.Fields{"replica": m.URL, "outcome": m.Outcome.String()}).
					Warn("circuit opened: requests to the replica are failing")
			}
			e.circuitOpen, e.openUntil, e.trialUntil = true, time.Now().Add(g.cfg.CircuitCooldown), time.Time{}
		}
	}
}

// register adds a replica or replaces its registration, keeping its counters.
func (g *registry) register(c *actor.Context, m messages.Register) {
	if m.Health == "" {
		m.Health = messages.HealthUnknown
	}
	e := g.st.entries[m.Reg.URL]
	if e == nil {
		g.st.nextGen++
		e = &entry{gen: g.st.nextGen}
		g.st.entries[m.Reg.URL] = e
		g.cfg.Log.WithFields(logrus.Fields{"replica": m.Reg.URL, "role": m.Reg.Role.String(), "models": m.Reg.Models}).
			Info("replica added")
	} else {
		g.stopActor(c, e.pid)
		g.cfg.Log.WithFields(logrus.Fields{"replica": m.Reg.URL, "role": m.Reg.Role.String(), "models": m.Reg.Models}).
			Info("replica registration replaced")
		g.cfg.OnLeave(m.Reg.URL)
	}
	e.reg = m.Reg
	e.health, e.failures, e.downSince = m.Health, 0, time.Time{}
	g.st.nextGen++ // actor IDs must never repeat: hollywood silently reuses a live actor with the same ID
	e.pid = c.SpawnChild(newReplica(g.cfg, c.PID(), m.Reg.URL, m.Health), "replica",
		append(restartOpts(), actor.WithID(strconv.FormatUint(g.st.nextGen, 10)),
			actor.WithMiddleware(g.cfg.ReplicaMiddleware...))...)
	g.reindex(c)
	if m.Reply != nil {
		close(m.Reply)
	}
}

// remove forgets url and stops its replica actor; it reports whether url was registered.
func (g *registry) remove(c *actor.Context, url, why string) bool {
	e := g.st.entries[url]
	if e == nil {
		return false
	}
	delete(g.st.entries, url)
	g.cfg.OnLeave(url)
	g.stopActor(c, e.pid)
	g.reindex(c)
	g.cfg.Log.WithFields(logrus.Fields{"replica": url, "unfinished": e.unfinished}).Info("replica " + why)
	return true
}

// stopActor stops one replica actor and waits for it, once: poisoning a PID twice, or a parent
// poisoning a child that is still stopping, hangs in hollywood v1.0.5.
func (g *registry) stopActor(c *actor.Context, pid *actor.PID) {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	<-c.Engine().PoisonCtx(ctx, pid).Done()
}

// reindex rebuilds the model index and tells OnChange the new set of registrations.
func (g *registry) reindex(c *actor.Context) {
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
	g.cfg.OnChange(regs)
}

// healthChanged applies a replica actor's report to the mirror used for routing.
func (g *registry) healthChanged(e *entry, m messages.HealthReport) {
	if m.Health == messages.HealthDown && e.health != messages.HealthDown {
		e.downSince = time.Now()
		g.cfg.OnLeave(e.reg.URL)
	} else if m.Health != messages.HealthDown {
		e.downSince = time.Time{}
	}
	e.health, e.failures = m.Health, m.Failures
}

// status lists the registered replicas sorted by URL; down ones only with includeDown.
func (g *registry) status(includeDown bool) []messages.ReplicaStatus {
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
