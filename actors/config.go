// Package actors holds lmproxy's actors: the registry, whose actor alone changes the set of replicas
// and their health, while each request's routing decision and its in-flight count, latency sample
// and breaker update run on the request's own goroutine under the registry's lock; one replica actor
// per replica, which owns its health loop; and the DistServe link actors. The state file's store
// lives here too.
package actors

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/actors/routing"
	"github.com/lmproxy/lmproxy/messages"
)

var errProbePanic = errors.New("health probe panicked")

// Config is what the registry and its replica actors need. Zero fields get the defaults of SPEC §3.
type Config struct {
	Strategy        routing.Strategy // default min_expected_latency
	HealthInterval  time.Duration    // between two probes of one replica; default 10s
	HealthTimeout   time.Duration    // one probe; default 5s
	HealthFailures  int              // consecutive failed probes before eviction; default 2
	DownTTL         time.Duration    // how long an evicted replica stays on the down list; default 10m
	CircuitCooldown time.Duration    // how long a circuit opened by a refused connection keeps traffic away; default 10s
	Probe           ProbeFunc        // default HTTPProbe with its own client
	// OnChange is called from the registry actor's goroutine with every registration after each
	// change (add, replace, remove), for persistence, without the registry's lock held. It must not
	// block: membership changes wait for it.
	OnChange func([]messages.Registration)
	// OnLeave is called from the registry actor's goroutine with the URL of a replica that was
	// removed, expired, evicted to the down list or re-registered (a restarted engine re-registers),
	// so that DistServe drops its links; the registry's lock is not held. It must not block.
	OnLeave func(url string)
	// ReplicaMiddleware wraps every replica actor's Receive (metrics, tests).
	ReplicaMiddleware []actor.MiddlewareFunc
	Log               logrus.FieldLogger
}

func (c Config) withDefaults() Config {
	if c.Strategy == nil {
		c.Strategy, _ = routing.New("min_expected_latency", nil)
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 10 * time.Second
	}
	if c.HealthTimeout <= 0 {
		c.HealthTimeout = 5 * time.Second
	}
	if c.HealthFailures <= 0 {
		c.HealthFailures = 2
	}
	if c.DownTTL <= 0 {
		c.DownTTL = 10 * time.Minute
	}
	if c.CircuitCooldown <= 0 {
		c.CircuitCooldown = 10 * time.Second
	}
	if c.Probe == nil {
		c.Probe = HTTPProbe(&http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}})
	}
	if c.OnChange == nil {
		c.OnChange = func([]messages.Registration) {}
	}
	if c.OnLeave == nil {
		c.OnLeave = func(string) {}
	}
	if c.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		c.Log = l
	}
	return c
}
