// Package lmproxy assembles a running proxy from its parts: the actor engine, the registry and its
// replica actors, the DistServe links, the state file, the metrics and the HTTP server. The
// `lmproxy serve` command and the test harness (proxytest) both start proxies through it, so tests
// run what users run.
package lmproxy

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/actors"
	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/messages"
	"github.com/lmproxy/lmproxy/metrics"
)

// Config is what Start needs.
type Config struct {
	Addr      string // host:port to listen on
	StateFile string // where the registry is persisted; "" = not persisted
	HTTP      lmhttp.Config
	Actors    actors.Config
	Log       logrus.FieldLogger // default: HTTP.Log, else discarded
}

// Proxy is a running proxy.
type Proxy struct {
	Server   *lmhttp.Server
	Registry *actors.Registry
	Engine   *actor.Engine
	PID      *actor.PID
	Metrics  *metrics.Metrics
	Links    *actors.Links // nil unless DistServe

	store      *actors.Store
	stopEvents func()
	probes     *http.Transport
}

// Start builds the proxy, restores the registrations of the state file (each probed before it is
// routed to), and listens on cfg.Addr.
func Start(cfg Config) (*Proxy, error) {
	log := cfg.Log
	if log == nil {
		log = cfg.HTTP.Log
	}
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	if cfg.HTTP.Log == nil {
		cfg.HTTP.Log = log
	}
	if cfg.Actors.Log == nil {
		cfg.Actors.Log = log
	}
	e, err := actor.NewEngine(actor.NewEngineConfig())
	if err != nil {
		return nil, err
	}
	p := &Proxy{Engine: e, probes: &http.Transport{MaxIdleConnsPerHost: 2}}
	p.Metrics = metrics.New(func() []messages.ReplicaStatus {
		st, _ := p.Registry.Status(context.Background(), true)
		return st
	})
	cfg.HTTP.Metrics = p.Metrics
	if cfg.Actors.Probe == nil {
		cfg.Actors.Probe = actors.HTTPProbe(&http.Client{Transport: p.probes})
	}
	cfg.Actors.Probe = p.Metrics.CountProbes(cfg.Actors.Probe)
	p.stopEvents = actors.SpawnEventMonitor(e, cfg.Actors.Log, p.Metrics.ActorEvent)

	cfg.Actors.OnChange = chain(cfg.Actors.OnChange, p.Metrics.KeepReplicas)
	var restored []messages.Registration
	if cfg.StateFile != "" {
		p.store = actors.OpenStore(cfg.StateFile, log)
		if restored, err = p.store.Load(); err != nil {
			log.WithError(err).Warn("cannot read the state file: starting with no replicas")
		}
		cfg.Actors.OnChange = chain(cfg.Actors.OnChange, p.store.Save)
	}
	if ds := cfg.HTTP.DistServe; ds != nil && ds.Links == nil {
		lio, err := lmhttp.NewLinkIO(ds, &http.Client{Transport: p.probes})
		if err != nil {
			p.stop()
			return nil, err
		}
		p.Links = actors.SpawnLinks(e, actors.LinksConfig{IO: lio, Log: cfg.Actors.Log})
		cfg.Actors.OnLeave = chain(cfg.Actors.OnLeave, p.Links.ReplicaLeft)
		withLinks := *ds
		withLinks.Links = p.Links
		cfg.HTTP.DistServe = &withLinks
	}
	p.Registry = actors.SpawnRegistry(e, cfg.Actors)
	p.PID = p.Registry.PID()
	p.Server = lmhttp.New(cfg.HTTP, p.Registry)
	if err := p.Server.Open(cfg.Addr); err != nil {
		p.stop()
		return nil, err
	}
	// Restored replicas are not known to serve yet: they take no traffic until their first probe.
	for _, reg := range restored {
		if err := p.Registry.Register(context.Background(), reg, messages.HealthUnknown); err != nil {
			p.Close(context.Background())
			return nil, err
		}
	}
	if len(restored) > 0 {
		log.WithField("replicas", len(restored)).Info("registrations restored from the state file; probing them")
	}
	return p, nil
}

// Close stops accepting, lets running requests and streams finish until ctx ends (then cuts them),
// stops the actors and writes the state file a last time. It returns ctx's error if requests had to
// be cut.
func (p *Proxy) Close(ctx context.Context) error {
	err := p.Server.Close(ctx)
	p.stop()
	return err
}

// stop ends everything but the HTTP server, in dependency order.
func (p *Proxy) stop() {
	if p.PID != nil {
		actors.StopRegistry(p.Engine, p.PID)
	}
	if p.Links != nil {
		p.Links.Stop()
	}
	if p.store != nil {
		p.store.Close()
	}
	p.stopEvents()
	p.probes.CloseIdleConnections()
}

// Flush waits until the state file holds the current registrations.
func (p *Proxy) Flush(ctx context.Context) error {
	if p.store == nil {
		return errors.New("no state file")
	}
	return p.store.Flush(ctx)
}

// chain calls first (if any), then next.
func chain[T any](first, next func(T)) func(T) {
	if first == nil {
		return next
	}
	return func(v T) {
		first(v)
		next(v)
	}
}
