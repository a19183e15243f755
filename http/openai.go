package http

import (
	"context"
	"net/http"
	"slices"
	"strings"

	"github.com/gorilla/mux"

	"github.com/lmproxy/lmproxy/http/h1"
	"github.com/lmproxy/lmproxy/messages"
)

// registerOpenAIRoutes adds the OpenAI-compatible routes under /v1.
func (s *Server) registerOpenAIRoutes() {
	s.router.HandleFunc("/v1/models", s.handleModels).Methods(http.MethodGet, http.MethodHead)
	s.router.HandleFunc("/v1/models/{model:.+}", s.handleModel).Methods(http.MethodGet, http.MethodHead)
	s.router.HandleFunc("/v1/chat/completions", s.handleInference).Methods(http.MethodPost)
	s.router.HandleFunc("/v1/completions", s.handleInference).Methods(http.MethodPost)
	// notModels comes first: gorilla/mux forgets an earlier route's method mismatch once a later
	// route's path matches, and a POST to a model route would be a 404 instead of a 405.
	s.router.NewRoute().MatcherFunc(notModels).Path("/v1/{path:.+}").Methods(http.MethodPost).HandlerFunc(s.handleInference)
}

// notModels keeps the catch-all inference route off the model routes, so that a POST there is a
// 405 rather than a request forwarded to a replica.
func notModels(r *http.Request, _ *mux.RouteMatch) bool {
	return r.URL.Path != "/v1/models" && !strings.HasPrefix(r.URL.Path, "/v1/models/")
}

// model is one entry of the OpenAI model list.
type model struct {
	ID         string   `json:"id"`
	Object     string   `json:"object"`
	Created    int64    `json:"created"`
	OwnedBy    string   `json:"owned_by"`
	Root       string   `json:"root"`
	Parent     *string  `json:"parent"`
	Permission []string `json:"permission"`
}

// handleModels answers GET /v1/models: every model served by at least one routable replica, once.
func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	ids, err := s.routableModels(r.Context())
	if err != nil {
		writeError(w, r, err)
		return
	}
	data := make([]model, len(ids))
	for i, id := range ids {
		data[i] = s.model(id)
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

// handleModel answers GET /v1/models/{model} (the OpenAI SDKs' models.retrieve): the model's entry
// of the list, or 404 when no routable replica serves it.
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["model"]
	ids, err := s.routableModels(r.Context())
	if err != nil {
		writeError(w, r, err)
		return
	}
	if _, found := slices.BinarySearch(ids, id); !found {
		writeError(w, r, errorf(http.StatusNotFound, "the model `"+id+"` does not exist"))
		return
	}
	writeJSON(w, http.StatusOK, s.model(id))
}

// routableModels are the models served by at least one routable replica, sorted, each once.
func (s *Server) routableModels(ctx context.Context) ([]string, error) {
	replicas, err := s.reg.Status(ctx, false)
	if err != nil {
		return nil, errorf(http.StatusServiceUnavailable, err.Error())
	}
	var ids []string
	for _, rs := range replicas {
		if rs.Routable {
			ids = append(ids, rs.Models...)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// model is the list entry of the model id. owned_by is "lmdeploy", as LMDeploy's own proxy and
// api_server answer, so that a client moved from that proxy to this one reads the same list.
func (s *Server) model(id string) model {
	return model{ID: id, Object: "model", Created: s.started.Unix(), OwnedBy: "lmdeploy", Root: id, Permission: []string{}}
}

// handleInference answers POST /v1/chat/completions, /v1/completions and any other POST /v1/<path>
// with a model: the request goes to one replica chosen by the routing strategy (or, for chat and
// completions under DistServe, through a Prefill and a Decode replica). 400 bad body, 404 unknown
// model, 413 body too large, 415 not JSON, 503 no replica, 502 replica failed, 504 timeout; otherwise
// the replica's own answer.
func (s *Server) handleInference(w http.ResponseWriter, r *http.Request) {
	body, f, err := s.readRequest(w, r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if s.cfg.DistServe != nil && (r.URL.Path == "/v1/chat/completions" || r.URL.Path == "/v1/completions") {
		s.serveDistServe(w, r, body, f)
		return
	}
	s.serveHybrid(w, r, body, f)
}

// serveHybrid forwards the request to one replica, or to another when that one cannot be reached.
func (s *Server) serveHybrid(w http.ResponseWriter, r *http.Request, body []byte, f requestFields) {
	var l messages.Lease
	var err error
	handed, _ := h1.HandedOver(r.Context()).(*handover)
	if handed != nil {
		l = handed.lease // the lean path's lease and exchange: see lean.go
		track(w).model = f.model
	} else {
		l, err = s.acquire(w, r, f.model, messages.Hybrid, "")
	}
	if err == nil {
		err = s.retryUnreachable(w, r, f.model, messages.Hybrid, l, func(l messages.Lease) (messages.Outcome, error) {
			o, err := s.forwardLeased(w, r, l, body, handed)
			handed = nil // a retry is an exchange of its own
			if err != nil {
				err = errorf(http.StatusBadGateway, "cannot reach replica "+l.URL+": "+err.Error())
			}
			return o, err
		})
	}
	if err != nil {
		failRequest(w, r, err)
	}
}
