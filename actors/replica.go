package actors

import (
	"context"
	"time"

	"github.com/anthdm/hollywood/actor"

	"github.com/lmproxy/lmproxy/messages"
)

// latencyWindow is how many request durations a replica keeps, as LMDeploy does.
const latencyWindow = 15

// probeTick asks a replica actor to probe its replica now.
type probeTick struct{}

// probeResult carries one probe's answer back into the replica actor.
type probeResult struct {
	health messages.Health
	err    error
}

// replicaState is a replica actor's memory. It lives in the producer's closure, so a replica actor
// that panics is restarted by hollywood with its health and failure count intact.
type replicaState struct {
	url        string
	health     messages.Health
	registered time.Time // when the registration began, for inGrace
	failures   int
	downSince  time.Time
	backoff    time.Duration
}

// replica is the actor of one replica: it owns the health loop, the consecutive-failure count and
// the down list's backoff, and reports every change to the registry. (The latency window lives in
// the registry, which learns each request's duration on release: keeping it here cost two more
// actor messages per request.)
type replica struct {
	st       *replicaState
	cfg      *Config
	registry *actor.PID
	ctx      context.Context
	cancel   context.CancelFunc
	timer    *time.Timer
	probing  bool
}

// newReplica returns the producer of a replica actor starting in health.
func newReplica(cfg *Config, registry *actor.PID, url string, health messages.Health) actor.Producer {
	st := &replicaState{url: url, health: health, registered: time.Now()}
	return func() actor.Receiver {
		return &replica{st: st, cfg: cfg, registry: registry}
	}
}

// Receive handles the replica actor's messages.
func (r *replica) Receive(c *actor.Context) {
	switch m := c.Message().(type) {
	case actor.Started:
		r.ctx, r.cancel = context.WithCancel(context.Background())
		if r.st.health == messages.HealthHealthy {
			r.schedule(c, r.cfg.HealthInterval)
		} else {
			r.schedule(c, 0) // not known to serve yet: find out at once
		}
	case actor.Stopped:
		// A panic while starting delivers Stopped to an instance that never ran Started.
		if r.cancel != nil {
			r.cancel()
		}
		if r.timer != nil {
			r.timer.Stop()
		}
	case probeTick:
		r.probe(c)
	case probeResult:
		r.probing = false
		r.apply(c, m)
		r.schedule(c, r.nextInterval())
	}
}

// schedule arms the next probe. A timer re-armed after each answer, rather than a ticker, never
// piles up ticks behind a slow probe and lets the down list back off.
func (r *replica) schedule(c *actor.Context, d time.Duration) {
	if r.timer != nil {
		r.timer.Stop()
	}
	e, self := c.Engine(), c.PID()
	r.timer = time.AfterFunc(d, func() { e.Send(self, probeTick{}) })
}

// probe runs one health probe off the actor's goroutine; the answer comes back as a probeResult.
func (r *replica) probe(c *actor.Context) {
	if r.probing {
		return
	}
	r.probing = true
	e, self, ctx, url := c.Engine(), c.PID(), r.ctx, r.st.url
	go func() {
		pctx, cancel := context.WithTimeout(ctx, r.cfg.HealthTimeout)
		defer cancel()
		res := safeProbe(pctx, r.cfg.Probe, url)
		if ctx.Err() == nil {
			e.Send(self, res)
		}
	}()
}

// safeProbe runs probe and turns a panic in it into a failure: it runs on its own goroutine, where
// a panic would take the process down.
func safeProbe(ctx context.Context, probe ProbeFunc, url string) (res probeResult) {
	defer func() {
		if v := recover(); v != nil {
			res = probeResult{err: errProbePanic}
		}
	}()
	h, err := probe(ctx, url)
	return probeResult{health: h, err: err}
}

// apply updates health from one probe answer (SPEC §5) and reports a change to the registry.
func (r *replica) apply(c *actor.Context, res probeResult) {
	st := r.st
	before := *st
	switch {
	case res.err == nil && (res.health == messages.HealthHealthy || res.health == messages.HealthSleeping):
		if st.health == messages.HealthDown {
			r.cfg.Log.WithField("replica", st.url).Info("replica is back: re-admitted")
		}
		st.health, st.failures, st.downSince, st.backoff = res.health, 0, time.Time{}, 0
	case res.err == nil && res.health == messages.HealthInitializing:
		// Transient: not routable, and neither a failure nor a success.
		if st.health != messages.HealthDown {
			st.health = messages.HealthInitializing
		}
	case r.inGrace():
		r.cfg.Log.WithField("replica", st.url).WithError(res.err).Debug("health probe failed; not counted yet")
	default:
		st.failures++
		r.cfg.Log.WithField("replica", st.url).WithError(res.err).Debug("health probe failed")
		switch {
		case st.health == messages.HealthDown:
			st.backoff = min(2*st.backoff, 8*r.cfg.HealthInterval)
			if time.Since(st.downSince) >= r.cfg.DownTTL {
				c.Send(r.registry, messages.ReplicaExpired{URL: st.url})
			}
		case st.failures >= r.cfg.HealthFailures:
			r.cfg.Log.WithField("replica", st.url).WithError(res.err).
				Warnf("replica evicted after %d failed health probes", st.failures)
			st.health, st.downSince, st.backoff = messages.HealthDown, time.Now(), r.cfg.HealthInterval
		}
	}
	if st.health != before.health || st.failures != before.failures {
		c.Send(r.registry, messages.HealthReport{URL: st.url, Health: st.health, Failures: st.failures})
	}
}

// inGrace reports whether a failed probe is not counted: the replica has not answered since it was
// registered, less than one health interval ago. LMDeploy's api_server registers before it listens,
// and a restored replica may be starting with the proxy; counted, the probes every unknownInterval
// would evict them within seconds, and the down list would then hold them back for a health
// interval or more. Meanwhile it stays unknown and unroutable.
func (r *replica) inGrace() bool {
	return r.st.health == messages.HealthUnknown && time.Since(r.st.registered) < r.cfg.HealthInterval
}

// unknownInterval is how often a replica that has not answered since it was registered is probed,
// when the health interval is longer: LMDeploy's api_server registers a moment before it listens,
// and should not wait a whole interval to be routed to.
const unknownInterval = time.Second

// nextInterval is the health interval, the down list's backoff for an evicted replica, or
// unknownInterval for one not heard from yet.
func (r *replica) nextInterval() time.Duration {
	switch {
	case r.st.health == messages.HealthDown && r.st.backoff > 0:
		return r.st.backoff
	case r.st.health == messages.HealthUnknown:
		return min(unknownInterval, r.cfg.HealthInterval)
	}
	return r.cfg.HealthInterval
}
