package http

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/http/h1"
	"github.com/lmproxy/lmproxy/messages"
)

// statusClientGone is what logs and metrics show for a client that left before any answer (nginx's
// convention); nobody receives it.
const statusClientGone = 499

// tracked wraps the ResponseWriter of one request: it remembers the status and what the handlers
// learned (model, replica, outcome) for the access log and metrics, without a context allocation.
type tracked struct {
	http.ResponseWriter
	id      string
	status  int
	written int64
	start   time.Time
	ttft    time.Duration
	route   string // the mux route template, for metrics
	model   string // set once a replica was chosen: unknown models never become labels
	replica string
	events  int // SSE events streamed
	outcome messages.Outcome
	decided bool // outcome is set
	err     error
}

// setOutcome records how the request ended on its replica.
func (t *tracked) setOutcome(o messages.Outcome) { t.outcome, t.decided = o, true }

func (t *tracked) WriteHeader(code int) {
	if t.status == 0 {
		t.status = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *tracked) Write(b []byte) (int, error) {
	if t.status == 0 {
		t.status = http.StatusOK
	}
	n, err := t.ResponseWriter.Write(b)
	t.written += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's Flush.
func (t *tracked) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// track returns the request's tracked writer, or nil when w was not wrapped by serveHTTP.
func track(w http.ResponseWriter) *tracked {
	t, _ := w.(*tracked)
	return t
}

// serveHTTP is the outer handler. It runs for every request, 404 and 405 included (gorilla/mux skips
// Router.Use middleware for those): request ID, CORS, auth, panic recovery and the access log.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	t := &tracked{ResponseWriter: w, start: time.Now()}
	if h, ok := h1.HandedOver(r.Context()).(*handover); ok {
		t.id, t.start = h.id, h.start // the lean path's request, answered here: see lean.go
	} else {
		t.id = requestIDOf(r.Header.Get("X-Request-Id"))
	}
	w.Header().Set("X-Request-Id", t.id)
	defer s.finishRequest(t, r)

	if origin := r.Header.Get("Origin"); origin != "" {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Expose-Headers", "X-Request-Id")
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
			h.Set("Access-Control-Allow-Headers", allowedHeaders(r))
			h.Set("Access-Control-Max-Age", "600")
			t.WriteHeader(http.StatusNoContent)
			return
		}
	}
	if r.RequestURI == "*" {
		// A request about the server as a whole (RFC 9110 §7.1): OPTIONS asks what it supports, as
		// net/http answers it; no route has this path, and the router would redirect it.
		if r.Method != http.MethodOptions {
			writeError(t, r, errorf(http.StatusBadRequest, "the target * is for OPTIONS only"))
			return
		}
		t.Header().Set("Allow", "GET, HEAD, POST, OPTIONS")
		t.Header().Set("Content-Length", "0")
		t.WriteHeader(http.StatusOK)
		return
	}
	if err := s.authorize(r); err != nil {
		writeError(t, r, err)
		return
	}
	if r.Method == http.MethodPost && (r.URL.Path == "/v1/chat/completions" || r.URL.Path == "/v1/completions") {
		// The two routes nearly every request takes, matched without gorilla/mux's regular
		// expressions and its two request copies (a few per cent of a short request's CPU).
		t.route = r.URL.Path
		s.handleInference(t, r)
		return
	}
	s.router.ServeHTTP(t, r)
}

// finishRequest recovers a handler panic into a 500 (or an aborted connection once the answer has
// started) and writes the access log line.
func (s *Server) finishRequest(t *tracked, r *http.Request) {
	if v := recover(); v != nil {
		if v != http.ErrAbortHandler {
			s.log.WithFields(logrus.Fields{"request_id": t.id, "path": r.URL.Path, "stack": string(debug.Stack())}).
				Errorf("handler panicked: %v", v)
			t.setOutcome(messages.Panic)
		}
		if t.status == 0 {
			writeError(t, r, fmt.Errorf("panic: %v", v))
		} else {
			defer panic(http.ErrAbortHandler) // the answer began: break the connection, not a clean end
		}
	}
	s.accessLog(t, r.Method, r.URL.Path)
}

// accessLog writes one line per request and records it in the metrics.
func (s *Server) accessLog(t *tracked, method, path string) {
	if t.decided && t.outcome == messages.ClientGone && cutByServer(t.ResponseWriter) {
		// Close cancelled it: the client did not leave, the proxy stopped.
		t.outcome = messages.Shutdown
	}
	status := t.status
	switch {
	case status == 0 && t.decided && t.outcome == messages.ClientGone:
		status = statusClientGone
	case status == 0 && t.decided && t.outcome == messages.Shutdown:
		status = http.StatusServiceUnavailable
	case status == 0:
		status = http.StatusOK
	}
	elapsed := time.Since(t.start)
	outcome := t.outcome
	if !t.decided {
		outcome = statusOutcome(status)
	}
	s.cfg.Metrics.Request(t.route, t.model, t.replica, status, elapsed, t.ttft, t.events, outcome)
	if !infoEnabled(s.access) {
		return // building the line costs a dozen allocations: not for a line nobody reads
	}
	f := logrus.Fields{
		"request_id":  t.id,
		"method":      method,
		"path":        path,
		"status":      status,
		"duration_ms": millis(elapsed),
		"bytes":       t.written,
	}
	if t.model != "" {
		f["model"] = t.model
	}
	if t.replica != "" {
		f["replica"] = t.replica
	}
	if t.ttft > 0 {
		f["ttft_ms"] = millis(t.ttft)
	}
	if t.decided {
		f["outcome"] = t.outcome.String()
	}
	entry := s.access.WithFields(f)
	var e *Error
	if t.err != nil && !errors.As(t.err, &e) {
		entry = entry.WithError(t.err)
	} else if e != nil {
		entry = entry.WithField("error", e.Message)
	}
	entry.Info("request")
}

// refused logs and counts a request the server answered before any route saw it (a malformed head),
// so that a broken client shows in the access log and the metrics as the others do. It has no
// request ID, method or path: they were not read.
func (s *Server) refused(remote string, status int, reason string, elapsed time.Duration) {
	s.cfg.Metrics.Request("", "", "", status, elapsed, 0, 0, statusOutcome(status))
	if infoEnabled(s.access) {
		s.access.WithFields(logrus.Fields{
			"status":      status,
			"error":       reason,
			"remote":      remote,
			"duration_ms": millis(elapsed),
		}).Info("request")
	}
}

// cutByServer reports whether the server's Close cut w's connection (h1's answers say so).
func cutByServer(w http.ResponseWriter) bool {
	c, ok := writerAs[interface{ Cut() bool }](w)
	return ok && c.Cut()
}

// millis is d in milliseconds to the microsecond, as the access log shows durations.
func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// routeLabel records the matched route's template (never the raw path: labels must stay bounded).
func routeLabel(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if t := track(w); t != nil {
			if route := mux.CurrentRoute(r); route != nil {
				t.route, _ = route.GetPathTemplate()
			}
		}
		next.ServeHTTP(w, r)
	})
}

// requestIDOf keeps a sane client-given X-Request-Id or makes one: a random per-process prefix and
// a counter, unique without a call to the system's random source per request.
func requestIDOf(id string) string {
	if id != "" && len(id) <= 128 && printable(id) {
		return id
	}
	var b [32]byte
	n := copy(b[:], idPrefix)
	return string(strconv.AppendUint(b[:n], idCounter.Add(1), 16))
}

var (
	idPrefix = func() string {
		var b [6]byte
		rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	idCounter atomic.Uint64
)

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// authorize checks the bearer key: --api-keys guard /v1/*, --admin-keys guard /nodes/* and
// /distserve/*. Preflight requests and the proxy's own /health and /metrics stay open.
func (s *Server) authorize(r *http.Request) error {
	if r.Method == http.MethodOptions {
		return nil
	}
	var keys [][]byte
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, "/v1/"):
		keys = s.apiKeys
	case strings.HasPrefix(p, "/nodes/"), strings.HasPrefix(p, "/distserve/"):
		keys = s.adminKeys
	}
	if len(keys) == 0 {
		return nil
	}
	auth := r.Header.Get("Authorization")
	if _, ok := bearerToken(auth); !ok {
		return errorf(http.StatusUnauthorized, "missing API key: send Authorization: Bearer <key>")
	}
	if !validKey(keys, auth) {
		return errorf(http.StatusUnauthorized, "invalid API key")
	}
	return nil
}

// validKey reports whether an Authorization header carries one of keys, in constant time.
func validKey(keys [][]byte, auth string) bool {
	got, ok := bearerToken(auth)
	if !ok {
		return false
	}
	match := 0
	for _, k := range keys {
		match |= subtle.ConstantTimeCompare([]byte(got), k)
	}
	return match == 1
}

// allowedHeaders answers a preflight's Access-Control-Request-Headers: every header a browser asks
// to send is allowed (OpenAI's JavaScript SDK sends its own x-stainless-* and openai-* headers), as
// LMDeploy's proxy allows them. "*" would not cover Authorization (Fetch standard), so the list is
// echoed; without one, the headers lmproxy's own API reads.
func allowedHeaders(r *http.Request) string {
	if asked := strings.Join(r.Header.Values("Access-Control-Request-Headers"), ", "); asked != "" {
		return asked
	}
	return "Authorization, Content-Type, X-Request-Id"
}

// bearerToken returns the credentials of an "Authorization: Bearer <key>" header. The scheme is
// matched in any case (RFC 9110 §11.1), as LMDeploy's proxy (FastAPI's HTTPBearer) matches it;
// the key is taken as it is.
func bearerToken(auth string) (string, bool) {
	const scheme = "Bearer "
	if len(auth) < len(scheme) || !strings.EqualFold(auth[:len(scheme)], scheme) {
		return "", false
	}
	return auth[len(scheme):], true
}

// infoEnabled reports whether l writes info lines; its level can change while the proxy runs.
func infoEnabled(l logrus.FieldLogger) bool {
	switch l := l.(type) {
	case *logrus.Logger:
		return l.IsLevelEnabled(logrus.InfoLevel)
	case *logrus.Entry:
		return l.Logger.IsLevelEnabled(logrus.InfoLevel)
	}
	return true
}
