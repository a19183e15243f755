package http

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// DistServeConfig turns on prefill/decode disaggregation (--serving-strategy DistServe).
type DistServeConfig struct {
	MigrationProtocol string // TCP, RDMA (default) or NVLINK
	LinkType          string // RoCE (default) or IB
	DummyPrefill      bool
	// DisableGDR asks for RDMA links without GPU Direct RDMA (with_gdr false in p2p_initialize).
	DisableGDR bool
	// Links is the DistServe link manager: actors.SpawnLinks over NewLinkIO(this config). Required.
	Links *actors.Links
}

// distServe is the DistServe configuration as the handlers use it.
type distServe struct {
	links        *actors.Links
	protocol     messages.MigrationProtocol
	dummyPrefill bool
}

// newDistServe checks cfg. Its values come from flags that were checked already, so a bad one is a
// programming error: New panics on it.
func newDistServe(cfg *DistServeConfig) *distServe {
	protocol, _, err := parseDistServe(cfg)
	if err == nil && cfg.Links == nil {
		err = errors.New("DistServeConfig.Links is nil: spawn it with actors.SpawnLinks over NewLinkIO")
	}
	if err != nil {
		panic("lmhttp: " + err.Error())
	}
	return &distServe{links: cfg.Links, protocol: protocol, dummyPrefill: cfg.DummyPrefill}
}

// parseDistServe reads the migration protocol and the RDMA link type, with LMDeploy's defaults.
func parseDistServe(cfg *DistServeConfig) (messages.MigrationProtocol, messages.RDMALinkType, error) {
	protocol, linkType := messages.RDMA, messages.RoCE
	var err error
	if cfg.MigrationProtocol != "" {
		if protocol, err = messages.ParseMigrationProtocol(cfg.MigrationProtocol); err != nil {
			return 0, 0, err
		}
	}
	if cfg.LinkType != "" {
		if linkType, err = messages.ParseRDMALinkType(cfg.LinkType); err != nil {
			return 0, 0, err
		}
	}
	return protocol, linkType, nil
}

// registerDistServeRoutes adds the /distserve/* admin routes.
func (s *Server) registerDistServeRoutes() {
	s.router.HandleFunc("/distserve/connection_warmup", s.handleDistServeWarmup).Methods(http.MethodPost)
	s.router.HandleFunc("/distserve/gc", s.handleDistServeGC).Methods(http.MethodPost)
}

// handleDistServeWarmup answers POST /distserve/connection_warmup: it connects every pair of a
// routable Prefill and a routable Decode replica, all at once. 200 {"SUCCESS": true}, or 502 naming
// the pairs that failed.
func (s *Server) handleDistServeWarmup(w http.ResponseWriter, r *http.Request) {
	if s.ds == nil {
		// Under Hybrid there is no pair to connect. LMDeploy's proxy answers success then too, and
		// scripts call warmup whatever the serving strategy.
		writeJSON(w, http.StatusOK, map[string]bool{"SUCCESS": true})
		return
	}
	replicas, err := s.reg.Status(r.Context(), false)
	if err != nil {
		writeError(w, r, errorf(http.StatusServiceUnavailable, err.Error()))
		return
	}
	var prefills, decodes []string
	for _, rs := range replicas {
		switch {
		case !rs.Routable:
		case rs.Role == messages.Prefill:
			prefills = append(prefills, rs.URL)
		case rs.Role == messages.Decode:
			decodes = append(decodes, rs.URL)
		}
	}
	var pairs []messages.Pair
	for _, p := range prefills {
		for _, d := range decodes {
			pairs = append(pairs, messages.Pair{Prefill: p, Decode: d})
		}
	}
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Go(func() { errs[i] = s.ds.links.Ensure(r.Context(), p) })
	}
	wg.Wait()
	var failed []string
	for i, err := range errs {
		if err != nil {
			failed = append(failed, pairs[i].String()+": "+err.Error())
		}
	}
	if len(failed) > 0 {
		writeError(w, r, errorf(http.StatusBadGateway, fmt.Sprintf("%d of %d DistServe links failed to connect: %s",
			len(failed), len(pairs), strings.Join(failed, "; "))))
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"SUCCESS": true})
}

// handleDistServeGC answers POST /distserve/gc: it frees, on their Prefill replicas, the KV caches of
// migrations whose Decode replica left before their answer ended. 200 {"freed": N, "failed": [...]};
// the failed ones are forgotten too: a second gc does not try them again.
func (s *Server) handleDistServeGC(w http.ResponseWriter, r *http.Request) {
	// Under Hybrid nothing migrates and nothing is left to free: the empty result, as warmup
	// answers success there.
	var res messages.GarbageCollected
	if s.ds != nil {
		var err error
		if res, err = s.ds.links.CollectGarbage(r.Context()); err != nil {
			writeError(w, r, errorf(http.StatusServiceUnavailable, err.Error()))
			return
		}
	}
	failed := res.Failed
	if failed == nil {
		failed = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"freed": res.Freed, "failed": failed})
}
