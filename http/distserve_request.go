package http

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// migrationRequest is LMDeploy's MigrationRequest (lmdeploy/pytorch/disagg/conn/protocol.py): where the
// Decode replica pulls the prompt's KV cache from.
type migrationRequest struct {
	Protocol        messages.MigrationProtocol `json:"protocol"`
	RemoteEngineID  string                     `json:"remote_engine_id"`
	RemoteSessionID int64                      `json:"remote_session_id"`
	RemoteBlockIDs  []int64                    `json:"remote_block_ids"`
	RemoteTokenID   int64                      `json:"remote_token_id"`
	IsDummyPrefill  bool                       `json:"is_dummy_prefill"`
}

// heldLease is a lease the handler holds until it releases it or hands it to forwardLeased, which
// releases it then: exactly once either way.
type heldLease struct {
	reg   *actors.Registry
	lease messages.Lease
	start time.Time
	done  bool
}

// release ends the lease with o, unless it was released or handed on already.
func (h *heldLease) release(o messages.Outcome) {
	if !h.done {
		h.done = true
		h.reg.Release(h.lease, o, time.Since(h.start))
	}
}

// handOver gives the lease to the code that will release it.
func (h *heldLease) handOver() messages.Lease {
	h.done = true
	return h.lease
}

// serveDistServe runs one chat or completion request through a Prefill and a Decode replica (SPEC §6):
// the prefill phase leaves the prompt's KV cache on the Prefill replica, and the Decode replica pulls
// it over the pair's link and answers the client.
func (s *Server) serveDistServe(w http.ResponseWriter, r *http.Request, body []byte, f requestFields) {
	if f.n > 1 {
		writeError(w, r, errorf(http.StatusBadRequest, "n > 1 is not supported with the DistServe serving strategy"))
		return
	}
	a, err := s.acquirePair(w, r, f.model)
	if err != nil {
		failRequest(w, r, err)
		return
	}
	decode := &heldLease{reg: s.reg, lease: a.Decode, start: time.Now()}
	defer decode.release(messages.Panic)

	mr := migrationRequest{Protocol: s.ds.protocol, RemoteEngineID: "dummy:dummy", RemoteBlockIDs: []int64{}, IsDummyPrefill: true}
	ended := messages.Panic // how the decode answer ended, for the shelf
	if !s.ds.dummyPrefill {
		pair := messages.Pair{Prefill: a.Prefill.URL, Decode: a.Decode.URL}
		info, err := s.prefill(w, r, a.Prefill, body)
		if err == nil {
			err = s.link(w, r, pair, info.session)
		}
		if err != nil {
			decode.release(unusedOutcome(r))
			failRequest(w, r, err)
			return
		}
		defer func() { s.ds.links.Unshelve(pair, info.session, ended) }()
		mr = migrationRequest{Protocol: s.ds.protocol, RemoteEngineID: pair.Prefill, RemoteSessionID: info.session,
			RemoteBlockIDs: info.blocks, RemoteTokenID: info.token}
	}
	ended = s.decodePhase(w, r, decode, body, mr)
}

// decodePhase sends the client's body with mr to the Decode replica and passes its answer on as
// Hybrid does. It returns how the answer ended, Unused when the request never reached the replica.
func (s *Server) decodePhase(w http.ResponseWriter, r *http.Request, decode *heldLease, body []byte, mr migrationRequest) messages.Outcome {
	b, err := withMigrationRequest(body, mr)
	if err != nil {
		decode.release(messages.Unused)
		writeError(w, r, err)
		return messages.Unused
	}
	o, err := s.forwardLeased(w, r, decode.handOver(), b)
	if err != nil {
		writeError(w, r, errorf(http.StatusBadGateway, "cannot reach the Decode replica "+decode.lease.URL+": "+err.Error()))
		return messages.Unused
	}
	return o
}

// acquirePair asks the registry for the Prefill and Decode replicas of one request (only the Decode
// one under --dummy-prefill) and turns a refusal into the error the client gets: 404 unknown model,
// 503 naming the role that no replica can serve now.
func (s *Server) acquirePair(w http.ResponseWriter, r *http.Request, model string) (messages.AcquiredPair, error) {
	start := time.Now()
	a, err := s.reg.AcquirePair(r.Context(), model, s.ds.dummyPrefill)
	s.cfg.Metrics.Routing(time.Since(start))
	if err != nil {
		if r.Context().Err() != nil {
			return a, errClientGone
		}
		return a, errorf(http.StatusServiceUnavailable, "the proxy is overloaded: "+err.Error())
	}
	if a.Status == messages.AcquireOK {
		track(w).model = model
	}
	return a, acquireError(a.Status, model, a.Missing)
}

// link shelves the prefill session on pair and ensures the pair's link is connected. When it cannot
// be, the session is unshelved as unused, which frees its cache on the Prefill replica, and the request
// ends without blaming either replica: a failed connect does not say whose fault it was.
func (s *Server) link(w http.ResponseWriter, r *http.Request, pair messages.Pair, session int64) error {
	s.ds.links.Shelve(pair, session)
	err := s.ds.links.Ensure(r.Context(), pair)
	if err == nil {
		return nil
	}
	s.ds.links.Unshelve(pair, session, messages.Unused)
	if r.Context().Err() != nil {
		return errClientGone
	}
	track(w).setOutcome(messages.Unused)
	return errorf(http.StatusBadGateway, "cannot connect the Prefill replica "+pair.Prefill+
		" to the Decode replica "+pair.Decode+": "+err.Error())
}

// unusedOutcome is how a lease that was never used ends: neutral either way, named for the logs.
func unusedOutcome(r *http.Request) messages.Outcome {
	if r.Context().Err() != nil {
		return messages.ClientGone
	}
	return messages.Unused
}

// withMigrationRequest is the client's body, byte for byte but for its migration_request.
func withMigrationRequest(body []byte, mr migrationRequest) ([]byte, error) {
	raw, err := json.Marshal(mr)
	if err != nil {
		return nil, err
	}
	return setOnly(body, "migration_request", string(raw))
}
