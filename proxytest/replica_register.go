package proxytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Registration retries start at firstRetry and double up to maxRetry, so a
// proxy started after its replicas picks them up within seconds.
const (
	firstRetry      = 500 * time.Millisecond
	maxRetry        = 5 * time.Second
	registerTimeout = 10 * time.Second // the proxy probes us while we wait
	removeTimeout   = 2 * time.Second  // Close must stay quick
)

// nodeStatus is the "status" of LMDeploy's Node body for /nodes/add, as its
// api_server sends it (register_to_proxy), plus speed when declared.
type nodeStatus struct {
	Models []string `json:"models"`
	Role   int      `json:"role"`
	Speed  float64  `json:"speed,omitempty"`
}

type nodeBody struct {
	URL    string      `json:"url"`
	Status *nodeStatus `json:"status,omitempty"`
}

// registerLoop runs until the proxy answers 200 to /nodes/add or ctx ends.
// Start launches it after the listener exists, so the proxy's probe of our
// /v1/models is answered.
func (r *Replica) registerLoop(ctx context.Context) {
	defer close(r.regDone)
	delay := firstRetry
	for {
		err := r.register(ctx)
		if err == nil {
			r.registered.Store(true)
			r.log.WithField("proxy", r.cfg.ProxyURL).Info("simulated replica registered")
			return
		}
		if ctx.Err() != nil {
			return
		}
		r.log.WithError(err).WithField("retry_in", delay).Warn("simulated replica: registration failed")
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(delay*2, maxRetry)
	}
}

func (r *Replica) register(ctx context.Context) error {
	r.mu.Lock()
	st := &nodeStatus{Models: append([]string(nil), r.models...), Role: r.role}
	r.mu.Unlock()
	if r.cfg.Speed > 0 {
		st.Speed = r.cfg.Speed
	}
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	err := r.postNodes(ctx, "/nodes/add", nodeBody{URL: r.URL, Status: st})
	// Cut short by Close after the request left: the proxy may hold us.
	if err != nil && errors.Is(err, context.Canceled) {
		r.regUnsure.Store(true)
	}
	return err
}

// deregister tells the proxy we leave; failures are only logged because the
// proxy's health checks evict a replica that is gone anyway.
func (r *Replica) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
	defer cancel()
	if err := r.postNodes(ctx, "/nodes/remove", nodeBody{URL: r.URL}); err != nil {
		r.log.WithError(err).Warn("simulated replica: remove from proxy failed")
		return
	}
	r.registered.Store(false)
	r.log.WithField("proxy", r.cfg.ProxyURL).Info("simulated replica removed from proxy")
}

// postNodes posts body to the proxy's admin path and wants a 200.
func (r *Replica) postNodes(ctx context.Context, path string, body nodeBody) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	url := strings.TrimRight(r.cfg.ProxyURL, "/") + path
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	if r.cfg.AdminKey != "" {
		req.Header.Set("Authorization", "Bearer "+r.cfg.AdminKey)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s: %s", url, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
