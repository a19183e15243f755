package proxytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/anthdm/hollywood/actor"

	"github.com/lmproxy/lmproxy/actors"
	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/messages"
	"github.com/lmproxy/lmproxy/metrics"
)

// Proxy is an lmproxy started in-process for tests: a real engine, registry and HTTP listener.
type Proxy struct {
	URL      string
	Server   *lmhttp.Server
	Registry *actors.Registry
	Engine   *actor.Engine
	PID      *actor.PID
	Metrics  *metrics.Metrics
	Links    *actors.Links // the DistServe link manager StartProxy started, if any

	stopEvents func()
	probes     *http.Transport
}

// ProxyConfig configures StartProxy.
type ProxyConfig struct {
	HTTP   lmhttp.Config
	Actors actors.Config
}

// StartProxy starts a proxy on a free loopback port and stops it when the test ends.
func StartProxy(tb testing.TB, cfg ProxyConfig) *Proxy {
	tb.Helper()
	e, err := actor.NewEngine(actor.NewEngineConfig())
	if err != nil {
		tb.Fatalf("engine: %v", err)
	}
	var reg *actors.Registry
	m := metrics.New(func() []messages.ReplicaStatus {
		st, _ := reg.Status(context.Background(), true)
		return st
	})
	probes := &http.Transport{MaxIdleConnsPerHost: 2}
	if cfg.Actors.Probe == nil {
		cfg.Actors.Probe = actors.HTTPProbe(&http.Client{Transport: probes})
	}
	cfg.Actors.Probe = m.CountProbes(cfg.Actors.Probe)
	stopEvents := actors.SpawnEventMonitor(e, cfg.Actors.Log, m.ActorEvent)
	links := startLinks(tb, e, &cfg, &http.Client{Transport: probes})
	pid := actors.SpawnRegistry(e, cfg.Actors)
	reg = actors.NewRegistry(e, pid)
	cfg.HTTP.Metrics = m
	srv := lmhttp.New(cfg.HTTP, reg)
	if err := srv.Open("127.0.0.1:0"); err != nil {
		tb.Fatalf("listen: %v", err)
	}
	scheme := "http"
	if cfg.HTTP.TLS != nil {
		scheme = "https"
	}
	p := &Proxy{URL: scheme + "://" + srv.Addr().String(), Server: srv, Registry: reg, Engine: e, PID: pid,
		Metrics: m, Links: links, stopEvents: stopEvents, probes: probes}
	tb.Cleanup(p.Close)
	return p
}

// Close stops the HTTP server, then the registry and its replica actors, then the DistServe links.
func (p *Proxy) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.Server.Close(ctx)
	actors.StopRegistry(p.Engine, p.PID)
	if p.Links != nil {
		p.Links.Stop()
	}
	p.stopEvents()
	p.probes.CloseIdleConnections()
}

// startLinks starts the DistServe link manager when cfg asks for DistServe without one, and wires it
// into cfg: the registry tells it of replicas that leave, and the HTTP server uses it.
func startLinks(tb testing.TB, e *actor.Engine, cfg *ProxyConfig, client *http.Client) *actors.Links {
	ds := cfg.HTTP.DistServe
	if ds == nil || ds.Links != nil {
		return nil
	}
	lio, err := lmhttp.NewLinkIO(ds, client)
	if err != nil {
		tb.Fatalf("DistServe: %v", err)
	}
	links := actors.SpawnLinks(e, actors.LinksConfig{IO: lio, Log: cfg.Actors.Log})
	onLeave := cfg.Actors.OnLeave
	cfg.Actors.OnLeave = func(url string) {
		if onLeave != nil {
			onLeave(url)
		}
		links.ReplicaLeft(url)
	}
	withLinks := *ds
	withLinks.Links = links
	cfg.HTTP.DistServe = &withLinks
	return links
}

// MustAdd registers replicas through POST /nodes/add, as a replica would, and fails the test unless
// each answer is 200.
func (p *Proxy) MustAdd(tb testing.TB, replicas ...*Replica) {
	tb.Helper()
	for _, r := range replicas {
		role := r.cfg.Role
		if role == "" {
			role = "Hybrid"
		}
		status := map[string]any{"models": r.modelList(), "role": role}
		if r.cfg.Speed > 0 {
			status["speed"] = r.cfg.Speed
		}
		code, body := p.Post(tb, "/nodes/add", map[string]any{"url": r.URL, "status": status})
		if code != http.StatusOK {
			tb.Fatalf("add %s: HTTP %d %s", r.URL, code, body)
		}
	}
}

// Post sends v as JSON to the proxy and returns the status and body.
func (p *Proxy) Post(tb testing.TB, path string, v any) (int, []byte) {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := http.Post(p.URL+path, "application/json", bytes.NewReader(b))
	if err != nil {
		tb.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	var out bytes.Buffer
	out.ReadFrom(resp.Body)
	return resp.StatusCode, out.Bytes()
}

// Status returns the registry's view of every replica, down ones included.
func (p *Proxy) Status(tb testing.TB) []messages.ReplicaStatus {
	tb.Helper()
	st, err := p.Registry.Status(context.Background(), true)
	if err != nil {
		tb.Fatalf("status: %v", err)
	}
	return st
}

// Unfinished returns the in-flight count of every replica, by URL.
func (p *Proxy) Unfinished(tb testing.TB) map[string]int {
	tb.Helper()
	out := map[string]int{}
	for _, rs := range p.Status(tb) {
		out[rs.URL] = rs.Unfinished
	}
	return out
}

// WaitIdle waits until every replica's in-flight count is 0, or fails the test after timeout.
func (p *Proxy) WaitIdle(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		busy := ""
		for u, n := range p.Unfinished(tb) {
			if n != 0 {
				busy += fmt.Sprintf(" %s=%d", u, n)
			}
		}
		if busy == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("in-flight counts still not 0 after %v:%s", timeout, busy)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// StartCluster starts a proxy and n simulated replicas registered with it.
func StartCluster(tb testing.TB, cfg ProxyConfig, n int, rcfg ReplicaConfig) (*Proxy, []*Replica) {
	tb.Helper()
	p := StartProxy(tb, cfg)
	reps := make([]*Replica, n)
	for i := range reps {
		reps[i] = StartReplica(tb, rcfg)
	}
	p.MustAdd(tb, reps...)
	return p, reps
}

// modelList is what the replica serves now.
func (r *Replica) modelList() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.models...)
}
