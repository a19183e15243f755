package http

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lmproxy/lmproxy/messages"
)

// registerNodeRoutes adds the /nodes/* admin API (LMDeploy's names, so its api_server registers
// unchanged).
func (s *Server) registerNodeRoutes() {
	s.router.HandleFunc("/nodes/status", s.handleNodesStatus).Methods(http.MethodGet, http.MethodHead)
	s.router.HandleFunc("/nodes/add", s.handleNodesAdd).Methods(http.MethodPost)
	s.router.HandleFunc("/nodes/remove", s.handleNodesRemove).Methods(http.MethodPost)
	s.router.HandleFunc("/nodes/terminate", s.handleNodesTerminate).Methods(http.MethodPost)
	s.router.HandleFunc("/nodes/terminate_all", s.handleNodesTerminateAll).Methods(http.MethodGet)
}

// nodeStatus is one replica in /nodes/status: LMDeploy's Status fields, then ours.
type nodeStatus struct {
	Role       messages.Role `json:"role"`
	RoleName   string        `json:"role_name"`
	Models     []string      `json:"models"`
	Unfinished int           `json:"unfinished"`
	Latency    []float64     `json:"latency"`
	Speed      *float64      `json:"speed"`
	Health     string        `json:"health"`
	Routable   bool          `json:"routable"`
	Failures   int           `json:"consecutive_failures"`
	Circuit    string        `json:"circuit"`
	DownSince  *time.Time    `json:"down_since,omitempty"`
}

// handleNodesStatus answers GET /nodes/status[?include=down]: every registered replica by URL.
func (s *Server) handleNodesStatus(w http.ResponseWriter, r *http.Request) {
	replicas, err := s.reg.Status(r.Context(), r.URL.Query().Get("include") == "down")
	if err != nil {
		writeError(w, r, errorf(http.StatusServiceUnavailable, err.Error()))
		return
	}
	out := make(map[string]nodeStatus, len(replicas))
	for _, rs := range replicas {
		ns := nodeStatus{
			Role: rs.Role, RoleName: rs.Role.String(), Models: rs.Models, Unfinished: rs.Unfinished,
			Latency: rs.Latency, Health: string(rs.Health), Routable: rs.Routable, Failures: rs.Failures,
			Circuit: string(rs.Circuit),
		}
		if rs.Speed > 0 {
			speed := rs.Speed
			ns.Speed = &speed
		}
		if !rs.DownSince.IsZero() {
			ds := rs.DownSince
			ns.DownSince = &ds
		}
		out[rs.URL] = ns
	}
	writeJSON(w, http.StatusOK, out)
}

// addRequest is the body of POST /nodes/add, as LMDeploy's api_server sends it.
type addRequest struct {
	URL    string `json:"url"`
	Status *struct {
		Models []string      `json:"models"`
		Role   messages.Role `json:"role"`
		Speed  *float64      `json:"speed"`
	} `json:"status"`
}

// parseAddRequest reads and checks a /nodes/add body. statusGiven reports whether it has a status:
// without one, LMDeploy's proxy keeps what it knows of the replica.
func parseAddRequest(body []byte) (reg messages.Registration, statusGiven bool, err error) {
	var req addRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return messages.Registration{}, false, errorf(http.StatusBadRequest, "invalid body: "+err.Error())
	}
	u, err := normalizeURL(req.URL)
	if err != nil {
		return messages.Registration{}, false, err
	}
	reg = messages.Registration{URL: u, Role: messages.Hybrid}
	if st := req.Status; st != nil {
		reg.Models = st.Models
		if st.Role != 0 {
			reg.Role = st.Role
		}
		if st.Speed != nil && *st.Speed > 0 { // LMDeploy's own example gives -1 for "unknown"
			reg.Speed = *st.Speed
		}
	}
	for _, m := range reg.Models {
		if m == "" {
			return reg, false, errorf(http.StatusBadRequest, "status.models holds an empty name")
		}
	}
	return reg, req.Status != nil, nil
}

// normalizeURL checks a replica URL and drops a trailing slash, so one replica has one key.
func normalizeURL(raw string) (string, error) {
	raw = strings.TrimRight(strings.TrimSpace(raw), "/")
	if raw == "" {
		return "", errorf(http.StatusBadRequest, `missing "url"`)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", errorf(http.StatusBadRequest, "invalid replica URL "+messages.ShownURL(raw)+": want http://host:port")
	}
	if u.User != nil {
		// They would be shown wherever the URL is (logs, metrics, /nodes/status), and never sent.
		return "", errorf(http.StatusBadRequest, "invalid replica URL "+messages.ShownURL(raw)+": credentials (user:password@) are not sent to replicas")
	}
	return raw, nil
}

// handleNodesAdd answers POST /nodes/add: probe GET <url>/v1/models, then add or replace the
// replica. 502 unreachable or no model; 400 a declared model the replica does not serve; 200.
func (s *Server) handleNodesAdd(w http.ResponseWriter, r *http.Request) {
	body, err := s.readAdminBody(w, r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	reg, statusGiven, err := parseAddRequest(body)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !statusGiven {
		s.keepRoleAndSpeed(r.Context(), &reg)
	}
	if err := s.addReplica(r.Context(), &reg); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, "Added successfully")
}

// keepRoleAndSpeed gives reg the role and speed its URL is registered with, if it is: a registration
// without a status renews the replica's models, as LMDeploy's proxy keeps its Status.
func (s *Server) keepRoleAndSpeed(ctx context.Context, reg *messages.Registration) {
	replicas, err := s.reg.Status(ctx, true)
	if err != nil {
		return
	}
	for _, rs := range replicas {
		if rs.URL == reg.URL {
			reg.Role, reg.Speed = rs.Role, rs.Speed
			return
		}
	}
}

// addReplica probes reg's replica, fills its models from the probe when none were declared, and
// registers it as healthy (the probe just proved it answers). --nodes uses it too.
//
// A registration that declares its models is kept although nothing answers the probe: LMDeploy's
// api_server registers from its start-up hook, before it listens, and never again. Such a replica
// is not routed to until its health probe finds it serving (actors: every second until then).
func (s *Server) addReplica(ctx context.Context, reg *messages.Registration) error {
	health, checked := messages.HealthHealthy, true
	served, status, err := s.probeModels(ctx, reg.URL)
	switch {
	case err != nil && len(reg.Models) > 0 && status == 0 && ctx.Err() == nil:
		health, checked = messages.HealthUnknown, false
		s.log.WithField("replica", reg.URL).WithError(err).Info("replica added before it answers: routed to once its health probe passes")
	case err != nil && len(reg.Models) > 0 && (status == http.StatusUnauthorized || status == http.StatusForbidden):
		// An api_server run with --api-keys: it answers, and its clients send it their key.
		checked = false
		s.log.WithField("replica", reg.URL).Info("replica added with the models it declares: its model list needs an API key")
	case err != nil:
		return err
	}
	for _, m := range reg.Models {
		if checked && !served[m] {
			return errorf(http.StatusBadRequest, fmt.Sprintf("model %q is not served by %s", m, reg.URL))
		}
	}
	if len(reg.Models) == 0 {
		for m := range served {
			reg.Models = append(reg.Models, m)
		}
	}
	if err := s.reg.Register(ctx, *reg, health); err != nil {
		return errorf(http.StatusServiceUnavailable, err.Error())
	}
	return nil
}

// AddReplica registers the replica at rawURL as POST /nodes/add would, probing it first.
func (s *Server) AddReplica(ctx context.Context, rawURL string) error {
	u, err := normalizeURL(rawURL)
	if err != nil {
		return err
	}
	return s.addReplica(ctx, &messages.Registration{URL: u, Role: messages.Hybrid})
}

// noHTTP is probeModels' status for a replica that answered, but not in HTTP the proxy could read:
// a certificate it does not trust, plain HTTP to an https URL. That is a setting to fix, not a
// replica still starting.
const noHTTP = -1

// notListening reports whether err says that nothing answers at the address yet: the connection was
// refused (or not made), or nothing came in time.
func notListening(err error) bool {
	var dns *net.DNSError
	if errors.As(err, &dns) && !dns.IsTimeout {
		return false // a name that does not resolve is a mistake to fix, not a replica starting
	}
	if dialFailed(err) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// probeModels asks a replica for its model list: unreachable, failing or empty → 502. status is the
// HTTP status the replica answered, 0 when nothing answers at its address (refused, timed out), or
// noHTTP.
func (s *Server) probeModels(ctx context.Context, base string) (served map[string]bool, status int, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/models", nil)
	if err != nil {
		return nil, 0, errorf(http.StatusBadRequest, "invalid replica URL: "+err.Error())
	}
	resp, err := s.admin.Do(req)
	if err != nil {
		status = noHTTP
		if notListening(err) {
			status = 0
		}
		return nil, status, errorf(http.StatusBadGateway, "cannot reach "+base+": "+err.Error())
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, resp.StatusCode, errorf(http.StatusBadGateway, fmt.Sprintf("%s/v1/models answered HTTP %d: "+
			"a replica that wants an API key is added with the models it serves in status.models", base, resp.StatusCode))
	default:
		return nil, resp.StatusCode, errorf(http.StatusBadGateway, fmt.Sprintf("%s/v1/models answered HTTP %d", base, resp.StatusCode))
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&list); err != nil {
		return nil, resp.StatusCode, errorf(http.StatusBadGateway, base+"/v1/models is not an OpenAI model list: "+err.Error())
	}
	served = map[string]bool{}
	for _, m := range list.Data {
		if m.ID != "" {
			served[m.ID] = true
		}
	}
	if len(served) == 0 {
		return nil, resp.StatusCode, errorf(http.StatusBadGateway, base+" serves no model")
	}
	return served, resp.StatusCode, nil
}

// maxAdminBody caps admin bodies below --max-body: a registration is a few hundred bytes, and the
// admin routes need not take the megabytes an inference request may carry.
const maxAdminBody = 1 << 20

// readAdminBody reads the JSON body of an admin request, as /v1/* reads its own, up to the smaller
// of --max-body and maxAdminBody.
func (s *Server) readAdminBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return readJSONBody(w, r, min(s.cfg.MaxBody, maxAdminBody))
}

// nodeURL reads the replica URL of /nodes/remove and /nodes/terminate: ?node_url= or {"url": ...}.
// The query form reads no body, so its Content-Type does not matter.
func (s *Server) nodeURL(w http.ResponseWriter, r *http.Request) (string, error) {
	if q := r.URL.Query().Get("node_url"); q != "" {
		return normalizeURL(q)
	}
	body, err := s.readAdminBody(w, r)
	if err != nil {
		return "", err
	}
	var req struct {
		URL string `json:"url"`
	}
	if json.Unmarshal(body, &req) != nil {
		return "", errorf(http.StatusBadRequest, `send {"url": "..."} or ?node_url=...`)
	}
	return normalizeURL(req.URL)
}

// handleNodesRemove answers POST /nodes/remove: 404 unknown, 200 removed.
func (s *Server) handleNodesRemove(w http.ResponseWriter, r *http.Request) {
	u, err := s.nodeURL(w, r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	ok, err := s.reg.Deregister(r.Context(), u)
	switch {
	case err != nil:
		writeError(w, r, errorf(http.StatusServiceUnavailable, err.Error()))
	case !ok:
		writeError(w, r, errorf(http.StatusNotFound, "replica "+u+" is not registered"))
	default:
		writeJSON(w, http.StatusOK, "Deleted successfully")
	}
}

// handleNodesTerminate answers POST /nodes/terminate: GET <url>/terminate, then remove. 404 unknown;
// 502 the replica refused (it stays registered); 200.
func (s *Server) handleNodesTerminate(w http.ResponseWriter, r *http.Request) {
	u, err := s.nodeURL(w, r)
	if err != nil {
		writeError(w, r, err)
		return
	}
	if !s.isRegistered(r.Context(), u) {
		writeError(w, r, errorf(http.StatusNotFound, "replica "+u+" is not registered"))
		return
	}
	if err := s.terminate(r.Context(), u); err != nil {
		writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, "Terminated successfully")
}

// handleNodesTerminateAll answers GET /nodes/terminate_all: 200 when every replica terminated, else
// 502 naming the failures.
func (s *Server) handleNodesTerminateAll(w http.ResponseWriter, r *http.Request) {
	replicas, err := s.reg.Status(r.Context(), true)
	if err != nil {
		writeError(w, r, errorf(http.StatusServiceUnavailable, err.Error()))
		return
	}
	var failed []string
	for _, rs := range replicas {
		if err := s.terminate(r.Context(), rs.URL); err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		writeError(w, r, errorf(http.StatusBadGateway, "some replicas did not terminate: "+strings.Join(failed, "; ")))
		return
	}
	writeJSON(w, http.StatusOK, "All nodes terminated successfully")
}

func (s *Server) isRegistered(ctx context.Context, u string) bool {
	replicas, err := s.reg.Status(ctx, true)
	if err != nil {
		return false
	}
	for _, rs := range replicas {
		if rs.URL == u {
			return true
		}
	}
	return false
}

// terminate asks one replica to stop and removes it once it agreed.
func (s *Server) terminate(ctx context.Context, u string) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/terminate", nil)
	if err != nil {
		return errorf(http.StatusBadGateway, u+": "+err.Error())
	}
	resp, err := s.admin.Do(req)
	if err != nil {
		return errorf(http.StatusBadGateway, u+" refused to terminate: "+err.Error())
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return errorf(http.StatusBadGateway, fmt.Sprintf("%s refused to terminate: HTTP %d %s", u, resp.StatusCode, strings.TrimSpace(string(msg))))
	}
	if _, err := s.reg.Deregister(ctx, u); err != nil {
		return errorf(http.StatusServiceUnavailable, err.Error())
	}
	return nil
}
