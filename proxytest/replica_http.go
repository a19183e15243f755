package proxytest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// maxBody bounds what one request may send; the fake needs no more.
const maxBody = 64 << 20

// route is one endpoint of the fake api_server.
type route struct {
	method  string
	handler func(w http.ResponseWriter, req *http.Request, body []byte)
}

// routeTable maps exact paths; any other POST /v1/* goes to handleEcho.
func (r *Replica) routeTable() map[string]route {
	return map[string]route{
		"/health":                     {http.MethodGet, r.handleHealth},
		"/terminate":                  {http.MethodGet, r.handleTerminate},
		"/v1/models":                  {http.MethodGet, r.handleModels},
		"/v1/chat/completions":        {http.MethodPost, r.handleChat},
		"/v1/completions":             {http.MethodPost, r.handleCompletions},
		"/distserve/engine_info":      {http.MethodGet, r.handleEngineInfo},
		"/distserve/p2p_initialize":   {http.MethodPost, r.handleP2PInitialize},
		"/distserve/p2p_connect":      {http.MethodPost, r.handleP2PConnect},
		"/distserve/p2p_drop_connect": {http.MethodPost, r.handleP2PDropConnect},
		"/distserve/free_cache":       {http.MethodPost, r.handleFreeCache},
		// The control API (replica_sim.go).
		"/sim/health":   {http.MethodPost, r.handleSimHealth},
		"/sim/fault":    {http.MethodPost, r.handleSimFault},
		"/sim/received": {http.MethodGet, r.handleSimReceived},
		"/sim/stats":    {http.MethodGet, r.handleSimStats},
	}
}

func (r *Replica) serveHTTP(w http.ResponseWriter, req *http.Request) {
	path := req.URL.Path
	rt, ok := r.routes[path]
	if !ok && req.Method == http.MethodPost && strings.HasPrefix(path, "/v1/") {
		rt, ok = route{http.MethodPost, r.handleEcho}, true
	}
	// FastAPI's answers for unknown paths and methods.
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"detail": "Not Found"})
		return
	}
	if req.Method != rt.method {
		w.Header().Set("Allow", rt.method)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"detail": "Method Not Allowed"})
		return
	}

	var body []byte
	if strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/distserve/") {
		var err error
		body, err = io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeError(w, http.StatusRequestEntityTooLarge, "request body too large")
				return
			}
			// The client left while sending its body.
			r.stopped()
			return
		}
		rec := Received{Method: req.Method, Path: path, Header: req.Header.Clone(), Body: body}
		if mr := gjson.GetBytes(body, "migration_request"); mr.Exists() && mr.Type != gjson.Null {
			rec.MigrationRequest = json.RawMessage(mr.Raw)
		}
		r.mu.Lock()
		r.received = append(r.received, rec)
		// Trimming only at twice the bound keeps appends amortised O(1);
		// recent() shows the bound.
		if limit := r.cfg.MaxRecorded; limit > 0 && len(r.received) >= 2*limit {
			r.received = slices.Clone(r.received[len(r.received)-limit:])
		}
		r.mu.Unlock()
		if req.Method == http.MethodPost && strings.HasPrefix(path, "/v1/") {
			r.active.Add(1)
			defer r.active.Add(-1)
			select {
			case r.next <- rec:
			default:
			}
		}
	}
	rt.handler(w, req, body)
}

// stopped is called when a handler's context ended before its answer was
// written. Usually the client left, which Cancelled counts; during Close the
// connection is broken instead, so the client sees a dying server rather
// than the empty 200 net/http would send for a handler that wrote nothing.
func (r *Replica) stopped() {
	if r.closing.Load() {
		abortConn()
	}
	r.cancelled.Add(1)
}

// handleHealth answers like LMDeploy's /health: the JSON status decides,
// 200 for healthy and sleeping, 503 for the rest.
func (r *Replica) handleHealth(w http.ResponseWriter, req *http.Request, _ []byte) {
	r.mu.Lock()
	status := r.health
	r.mu.Unlock()
	switch status {
	case "empty":
		w.WriteHeader(http.StatusOK)
	case "error":
		http.Error(w, "Internal Server Error", http.StatusInternalServerError)
	case "hang":
		<-req.Context().Done()
		if r.closing.Load() {
			abortConn()
		}
	case "healthy", "sleeping":
		writeJSON(w, http.StatusOK, map[string]string{"status": status, "message": "simulated " + status})
	default:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": status, "message": "simulated " + status})
	}
}

// handleTerminate answers like LMDeploy's /terminate: 200 with no body, or
// an error body when terminating is refused. The listener keeps running
// unless OnTerminate ends it: tests own the replica's lifetime.
func (r *Replica) handleTerminate(w http.ResponseWriter, _ *http.Request, _ []byte) {
	r.mu.Lock()
	status := r.terminateStatus
	r.mu.Unlock()
	if status == http.StatusOK {
		r.terminated.Store(true)
		w.WriteHeader(http.StatusOK)
		if r.cfg.OnTerminate != nil {
			r.cfg.OnTerminate()
		}
		return
	}
	writeError(w, status, "The server can not be terminated. Please add --allow-terminate-by-client when start the server.")
}

// modelCard and modelPermission follow LMDeploy's protocol.py.
type modelCard struct {
	ID         string            `json:"id"`
	Object     string            `json:"object"`
	Created    int64             `json:"created"`
	OwnedBy    string            `json:"owned_by"`
	Root       string            `json:"root"`
	Parent     *string           `json:"parent"`
	Permission []modelPermission `json:"permission"`
}

type modelPermission struct {
	ID                 string  `json:"id"`
	Object             string  `json:"object"`
	Created            int64   `json:"created"`
	AllowCreateEngine  bool    `json:"allow_create_engine"`
	AllowSampling      bool    `json:"allow_sampling"`
	AllowLogprobs      bool    `json:"allow_logprobs"`
	AllowSearchIndices bool    `json:"allow_search_indices"`
	AllowView          bool    `json:"allow_view"`
	AllowFineTuning    bool    `json:"allow_fine_tuning"`
	Organization       string  `json:"organization"`
	Group              *string `json:"group"`
	IsBlocking         bool    `json:"is_blocking"`
}

func (r *Replica) handleModels(w http.ResponseWriter, _ *http.Request, _ []byte) {
	now := time.Now().Unix()
	data := []modelCard{}
	for _, m := range r.currentModels() {
		data = append(data, modelCard{
			ID: m, Object: "model", Created: now, OwnedBy: "lmdeploy", Root: m,
			Permission: []modelPermission{{
				ID: fmt.Sprintf("modelperm-%d", r.seq.Add(1)), Object: "model_permission", Created: now,
				AllowSampling: true, AllowLogprobs: true, AllowSearchIndices: true, AllowView: true,
				Organization: "*",
			}},
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

func (r *Replica) currentModels() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.models...)
}

func (r *Replica) serves(model string) bool {
	for _, m := range r.currentModels() {
		if m == model {
			return true
		}
	}
	return false
}

// errorBody is LMDeploy's flat ErrorResponse (lmdeploy/serve/openai/protocol.py).
type errorBody struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Code    int     `json:"code"`
	Param   *string `json:"param"`
	Object  string  `json:"object"`
}

// errorType is LMDeploy's status to error type mapping (serve/openai/errors.py).
func errorType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status >= 500:
		return "server_error"
	}
	return "invalid_request_error"
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Message: msg, Type: errorType(status), Code: status, Object: "error"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeRawJSON(w, status, b)
}

func writeRawJSON(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// abortConn breaks the connection without a proper end: net/http recovers
// this panic silently and closes the socket, so the client sees a read
// error (unexpected EOF mid-stream, EOF before any byte). Callers flush
// what they want the client to have received first.
func abortConn() {
	panic(http.ErrAbortHandler)
}
