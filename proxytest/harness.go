package proxytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy"
	"github.com/lmproxy/lmproxy/actors"
	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/messages"
)

// Proxy is an lmproxy started in-process for tests, exactly as `lmproxy serve` starts one, on a
// free loopback port.
type Proxy struct {
	*lmproxy.Proxy
	URL string

	closeOnce sync.Once
}

// ProxyConfig configures StartProxy.
type ProxyConfig struct {
	HTTP      lmhttp.Config
	Actors    actors.Config
	StateFile string // "" = no persistence
}

// StartProxy starts a proxy and stops it when the test ends.
func StartProxy(tb testing.TB, cfg ProxyConfig) *Proxy {
	tb.Helper()
	lp, err := lmproxy.Start(lmproxy.Config{Addr: "127.0.0.1:0", StateFile: cfg.StateFile, HTTP: cfg.HTTP, Actors: cfg.Actors})
	if err != nil {
		tb.Fatalf("start proxy: %v", err)
	}
	scheme := "http"
	if cfg.HTTP.TLS != nil {
		scheme = "https"
	}
	p := &Proxy{Proxy: lp, URL: scheme + "://" + lp.Server.Addr().String()}
	tb.Cleanup(p.Close)
	return p
}

// Close stops the proxy, giving running requests a few seconds. It is safe to call twice.
func (p *Proxy) Close() { p.CloseWithin(5 * time.Second) }

// CloseWithin stops the proxy, giving running requests up to wait before they are cut, and returns
// lmproxy.Proxy.Close's error. Only the first call (of it or Close) stops the proxy; later ones
// return nil.
func (p *Proxy) CloseWithin(wait time.Duration) error {
	var err error
	p.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		err = p.Proxy.Close(ctx)
	})
	return err
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
