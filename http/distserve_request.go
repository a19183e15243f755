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

// heldLease is a lease the handler holds until it releases it or hands it to the code that releases
// it then (forwardLeased, or a decode attempt): exactly once either way.
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
// it over the pair's link and answers the client. A replica of either role that cannot be reached is
// replaced by another of its role, once, as under Hybrid.
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

	var m *migration // none under --dummy-prefill
	if !s.ds.dummyPrefill {
		if m, err = s.prefillPhase(w, r, f.model, a.Prefill, body); err != nil {
			decode.release(unusedOutcome(r))
			failRequest(w, r, err)
			return
		}
		defer func() { s.ds.links.Unshelve(m.shelved, m.info.session, m.ended) }()
	}
	err = s.retryUnreachable(w, r, f.model, messages.Decode, decode.handOver(), func(l messages.Lease) (messages.Outcome, error) {
		return s.decodePhase(w, r, l, body, m)
	})
	if err != nil {
		failRequest(w, r, err)
	}
}

// migration is a request's prefill session on its way to a Decode replica.
type migration struct {
	prefill string // the Prefill replica that keeps the session's KV cache
	info    prefillInfo
	shelved messages.Pair    // where the session is shelved: with the Decode replica tried last
	ended   messages.Outcome // how the decode answer ended, for the shelf
}

// prefillPhase runs the prefill on the leased Prefill replica, or on another one when that one cannot
// be reached, and returns the session for the Decode replica to pull.
func (s *Server) prefillPhase(w http.ResponseWriter, r *http.Request, model string, l messages.Lease, body []byte) (*migration, error) {
	m := &migration{ended: messages.Panic}
	err := s.retryUnreachable(w, r, model, messages.Prefill, l, func(l messages.Lease) (o messages.Outcome, err error) {
		m.prefill = l.URL
		m.info, o, err = s.prefill(w, r, l, body)
		return o, err
	})
	return m, err
}

// request is the migration request that tells a Decode replica where to pull the prompt's KV cache
// from; without a prefill session (nil), LMDeploy's dummy one.
func (m *migration) request(protocol messages.MigrationProtocol) migrationRequest {
	if m == nil {
		return migrationRequest{Protocol: protocol, RemoteEngineID: "dummy:dummy", RemoteBlockIDs: []int64{}, IsDummyPrefill: true}
	}
	return migrationRequest{Protocol: protocol, RemoteEngineID: m.prefill, RemoteSessionID: m.info.session,
		RemoteBlockIDs: m.info.blocks, RemoteTokenID: m.info.token}
}

// shelve shelves the session on pair or, when a Decode replica that could not be reached had it, moves
// it there: its cache waits for pair's Decode replica now, and is not freed.
func (m *migration) shelve(links *actors.Links, pair messages.Pair) {
	if m.shelved == (messages.Pair{}) {
		links.Shelve(pair, m.info.session)
	} else {
		links.Reshelve(m.shelved, pair, m.info.session)
	}
	m.shelved = pair
}

// decodePhase sends the client's body with the migration request of m (nil under --dummy-prefill) to
// the leased Decode replica, linking the session's Prefill replica to it first, and passes its answer
// on as Hybrid does; it releases the lease. It returns how the exchange went for the replica:
// DialError when it could not be reached, at the link or with the request, and nothing was written
// to the client.
func (s *Server) decodePhase(w http.ResponseWriter, r *http.Request, l messages.Lease, body []byte, m *migration) (messages.Outcome, error) {
	decode := &heldLease{reg: s.reg, lease: l, start: time.Now()}
	defer decode.release(messages.Panic)
	if m != nil {
		if o, err := s.link(w, r, m, l.URL); err != nil {
			decode.release(o)
			return o, err
		}
	}
	b, err := withMigrationRequest(body, m.request(s.ds.protocol))
	if err != nil {
		decode.release(messages.Unused)
		return messages.Unused, err
	}
	o, err := s.forwardLeased(w, r, decode.handOver(), b, nil)
	if m != nil {
		m.ended = o
	}
	if err != nil {
		return o, errorf(http.StatusBadGateway, "cannot reach the Decode replica "+l.URL+": "+err.Error())
	}
	return o, nil
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

// link shelves the session on its pair with decode and ensures the pair's link is connected. It
// returns how that went for the Decode replica: DialError when it could not be connected to, so that
// another one can be tried; any other failed connect does not say whose fault it was and blames
// neither. Either way the session's cache is freed when the request ends, unless another Decode
// replica takes it.
func (s *Server) link(w http.ResponseWriter, r *http.Request, m *migration, decode string) (messages.Outcome, error) {
	pair := messages.Pair{Prefill: m.prefill, Decode: decode}
	m.shelve(s.ds.links, pair)
	err := s.ds.links.Ensure(r.Context(), pair)
	if err == nil {
		return messages.OK, nil
	}
	m.ended = messages.Unused
	t := track(w)
	switch {
	case r.Context().Err() != nil:
		return messages.ClientGone, errClientGone
	case unreachable(err, decode):
		t.replica = decode
		t.setOutcome(messages.DialError)
		return messages.DialError, errorf(http.StatusBadGateway, "cannot reach the Decode replica "+decode+": "+err.Error())
	}
	t.setOutcome(messages.Unused)
	return messages.Unused, errorf(http.StatusBadGateway, "cannot connect the Prefill replica "+pair.Prefill+
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
	return setFields(body, []jsonField{{"migration_request", string(raw)}})
}
