package proxytest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// The control API: Replica's setters and getters over HTTP, so a replica in another process
// (`lmproxy replica`) can be steered and inspected by scripts as tests steer one in-process. Its
// paths start with /sim/, which no api_server serves, and it is never recorded.

// simHealth is the body of POST /sim/health.
type simHealth struct {
	Status string `json:"status"`
}

// simFault is Fault in JSON: the body of POST /sim/fault.
type simFault struct {
	Status   int    `json:"status"`
	Body     string `json:"body"`
	CutAfter int    `json:"cut_after"`
	Hang     bool   `json:"hang"`
}

// simReceived is one Received in JSON; the body is a string, as it may not be JSON.
type simReceived struct {
	Method           string          `json:"method"`
	Path             string          `json:"path"`
	Headers          http.Header     `json:"headers"`
	Body             string          `json:"body"`
	MigrationRequest json.RawMessage `json:"migration_request"`
}

// simStats is the answer of GET /sim/stats.
type simStats struct {
	Cancelled  int64 `json:"cancelled"`
	Active     int64 `json:"active"`
	Terminated bool  `json:"terminated"`
	Registered bool  `json:"registered"`
}

// handleSimHealth is POST /sim/health {"status":"sleeping"}: SetHealth.
func (r *Replica) handleSimHealth(w http.ResponseWriter, req *http.Request, _ []byte) {
	var h simHealth
	if !decodeSim(w, req, &h) {
		return
	}
	if h.Status == "" {
		writeSimError(w, `"status" is missing: one of `+strings.Join(HealthStatuses, ", "))
		return
	}
	r.SetHealth(h.Status)
	writeJSON(w, http.StatusOK, h)
}

// handleSimFault is POST /sim/fault {"status":500,"body":"...","cut_after":3,"hang":false}:
// SetFault; {} clears the fault.
func (r *Replica) handleSimFault(w http.ResponseWriter, req *http.Request, _ []byte) {
	var f simFault
	if !decodeSim(w, req, &f) {
		return
	}
	// net/http panics on a status outside 100-999, and a 1xx is no answer.
	if f.Status != 0 && (f.Status < 200 || f.Status > 599) {
		writeSimError(w, fmt.Sprintf(`"status" %d: want 200-599, or 0 for none`, f.Status))
		return
	}
	r.SetFault(Fault{Status: f.Status, Body: f.Body, CutAfter: f.CutAfter, Hang: f.Hang})
	writeJSON(w, http.StatusOK, f)
}

// handleSimReceived is GET /sim/received[?path=/v1/completions]: Received, or Requests(path).
func (r *Replica) handleSimReceived(w http.ResponseWriter, req *http.Request, _ []byte) {
	recs := r.Received()
	if path := req.URL.Query().Get("path"); path != "" {
		recs = r.Requests(path)
	}
	out := make([]simReceived, 0, len(recs))
	for _, rec := range recs {
		out = append(out, simReceived{Method: rec.Method, Path: rec.Path, Headers: rec.Header,
			Body: string(rec.Body), MigrationRequest: rec.MigrationRequest})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleSimStats is GET /sim/stats: the counters and flags of the getters.
func (r *Replica) handleSimStats(w http.ResponseWriter, _ *http.Request, _ []byte) {
	writeJSON(w, http.StatusOK, simStats{Cancelled: r.Cancelled(), Active: r.Active(),
		Terminated: r.Terminated(), Registered: r.Registered()})
}

// decodeSim reads req's body, one JSON object, into v. Unknown fields are refused: in a control
// call they are typos more likely than anything to ignore. It answers 400 and reports false when
// the body does not fit.
func decodeSim(w http.ResponseWriter, req *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, next := dec.Token(); !errors.Is(next, io.EOF) {
			err = errors.New("more than one JSON value")
		}
	}
	if err != nil {
		writeSimError(w, "invalid JSON body: "+err.Error())
		return false
	}
	return true
}

// writeSimError answers 400 with FastAPI's {"detail"} body, as the api_server's own routes do.
func writeSimError(w http.ResponseWriter, msg string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"detail": msg})
}
