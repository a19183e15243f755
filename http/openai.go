package http

import (
	"errors"
	"net/http"
	"slices"

	"github.com/lmproxy/lmproxy/messages"
)

// registerOpenAIRoutes adds the OpenAI-compatible routes under /v1.
func (s *Server) registerOpenAIRoutes() {
	s.router.HandleFunc("/v1/models", s.handleModels)
	s.router.HandleFunc("/v1/chat/completions", s.handleInference).Methods(http.MethodPost)
	s.router.HandleFunc("/v1/completions", s.handleInference).Methods(http.MethodPost)
	s.router.HandleFunc("/v1/{path:.+}", s.handleInference).Methods(http.MethodPost)
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
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, r, errorf(http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on "+r.URL.Path))
		return
	}
	replicas, err := s.reg.Status(r.Context(), false)
	if err != nil {
		writeError(w, r, errorf(http.StatusServiceUnavailable, err.Error()))
		return
	}
	var ids []string
	for _, rs := range replicas {
		if rs.Routable {
			ids = append(ids, rs.Models...)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	data := make([]model, len(ids))
	for i, id := range ids {
		data[i] = model{ID: id, Object: "model", Created: s.started.Unix(), OwnedBy: "lmproxy", Root: id, Permission: []string{}}
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
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

// serveHybrid forwards the request to one replica. A replica that could not be reached at all is
// left out and the request tried once more on another (nothing reached the first one).
func (s *Server) serveHybrid(w http.ResponseWriter, r *http.Request, body []byte, f requestFields) {
	var not string
	for attempt := 0; attempt < 2; attempt++ {
		l, err := s.acquire(w, r, f.model, messages.Hybrid, not)
		if err != nil {
			if errors.Is(err, errClientGone) {
				track(w).setOutcome(messages.ClientGone)
				return
			}
			if not != "" { // the retry found no other replica: report the first failure
				err = errorf(http.StatusBadGateway, "cannot reach replica "+not)
			}
			writeError(w, r, err)
			return
		}
		res := s.forwardLeased(w, r, l, body)
		if res.abort {
			panic(http.ErrAbortHandler)
		}
		if res.dialErr == nil {
			return
		}
		s.log.WithFields(map[string]any{"request_id": track(w).id, "replica": l.URL}).WithError(res.dialErr).
			Warn("replica unreachable; trying another")
		not = l.URL
	}
	writeError(w, r, errorf(http.StatusBadGateway, "cannot reach replica "+not))
}
