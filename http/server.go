// Package http is lmproxy's HTTP surface: the OpenAI-compatible inference routes that are forwarded to
// replicas, the /nodes/* admin API, the DistServe routes and the proxy's own health.
package http

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/http/h1"
	"github.com/lmproxy/lmproxy/http/relay"
	"github.com/lmproxy/lmproxy/metrics"
)

// Config is what the HTTP server needs. Zero fields get the defaults of SPEC §3.
type Config struct {
	APIKeys         []string      // guard /v1/*
	AdminKeys       []string      // guard /nodes/* and /distserve/*
	MaxBody         int64         // larger request bodies get 413 (admin bodies: at most 1 MiB); default 64 MiB
	UpstreamTimeout time.Duration // total time of one upstream request; 0 = none
	MaxConns        int           // upstream connections in all; 0 = no limit
	MaxConnsPerHost int           // upstream connections per replica; 0 = no limit
	ProbeTimeout    time.Duration // /nodes/add's probe of /v1/models and /nodes/terminate's call; default 5s
	DistServe       *DistServeConfig
	Metrics         *metrics.Metrics // nil: no /metrics
	TLS             *tls.Config
	Log             logrus.FieldLogger
	AccessLog       logrus.FieldLogger // the access log's lines (one per request); nil: Log
}

// Server is the proxy's HTTP server.
type Server struct {
	cfg       Config
	reg       *actors.Registry
	log       logrus.FieldLogger
	access    logrus.FieldLogger // the access log
	apiKeys   [][]byte
	adminKeys [][]byte
	upstream  *upstream
	admin     *http.Client // probes and admin calls to replicas, apart from the request path's pool
	router    *mux.Router
	started   time.Time
	ds        *distServe // nil: Hybrid
	// limits bound each client connection; a field so that internal tests can prove them in
	// milliseconds instead of waiting out the real ones.
	limits serverLimits

	ln    net.Listener
	srv   *h1.Server
	relay *relay.Relay // nil: streams are copied by their handlers' goroutines
}

// serverLimits are the listener's own bounds on a client connection.
type serverLimits struct {
	readHeaderTimeout time.Duration // the request line and headers must arrive within it (slowloris)
	idleTimeout       time.Duration // a keep-alive connection without a request is closed after it
	maxHeaderBytes    int           // larger request headers get 431
}

// defaultLimits are the limits of every server. There is no WriteTimeout: it would cut every long
// stream.
var defaultLimits = serverLimits{readHeaderTimeout: 10 * time.Second, idleTimeout: 120 * time.Second, maxHeaderBytes: 1 << 20}

// New builds the server over the registry reg.
func New(cfg Config, reg *actors.Registry) *Server {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 64 << 20
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 5 * time.Second
	}
	if cfg.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		cfg.Log = l
	}
	if cfg.AccessLog == nil {
		cfg.AccessLog = cfg.Log
	}
	s := &Server{
		cfg:     cfg,
		reg:     reg,
		log:     cfg.Log,
		access:  cfg.AccessLog,
		admin:   &http.Client{Timeout: cfg.ProbeTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
		router:  mux.NewRouter(),
		started: time.Now(),
		limits:  defaultLimits,
	}
	s.upstream = newUpstream(cfg.MaxConns, cfg.MaxConnsPerHost, cfg.UpstreamTimeout)
	if cfg.DistServe != nil {
		s.ds = newDistServe(cfg.DistServe)
	}
	for _, k := range cfg.APIKeys {
		s.apiKeys = append(s.apiKeys, []byte(k))
	}
	for _, k := range cfg.AdminKeys {
		s.adminKeys = append(s.adminKeys, []byte(k))
	}
	s.router.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, errorf(http.StatusNotFound, "no route for "+r.Method+" "+r.URL.Path))
	})
	s.router.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", s.allowedMethods(r))
		writeError(w, r, errorf(http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on "+r.URL.Path))
	})
	s.registerOpenAIRoutes()
	s.registerNodeRoutes()
	s.registerDistServeRoutes()
	s.router.HandleFunc("/health", s.handleHealth).Methods(http.MethodGet, http.MethodHead)
	s.router.HandleFunc("/openapi.json", s.handleOpenAPI).Methods(http.MethodGet, http.MethodHead)
	if cfg.Metrics != nil {
		s.router.Handle("/metrics", cfg.Metrics.Handler()).Methods(http.MethodGet, http.MethodHead)
	}
	s.router.Use(routeLabel)
	return s
}

// allowedMethods lists the methods of the routes whose path r's matches, for a 405's Allow header.
func (s *Server) allowedMethods(r *http.Request) string {
	var allowed []string
	s.router.Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		var m mux.RouteMatch
		if route.Match(r, &m) || m.MatchErr == mux.ErrMethodMismatch {
			methods, _ := route.GetMethods()
			allowed = append(allowed, methods...)
		}
		return nil
	})
	slices.Sort(allowed)
	return strings.Join(slices.Compact(allowed), ", ")
}

// Handler is the server's whole HTTP handler, for tests and embedding.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Open listens on addr synchronously (so a caller knows the port is taken before it goes on) and
// serves in a goroutine.
func (s *Server) Open(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = ln
	// One relay loop per four cores, besides the loop that takes each stream's first bytes: a loop's
	// work is mostly system calls, and fewer loops wake up less often for more events each
	// (measured on 2 cores: one loop used ~3% less CPU than two).
	s.relay = relay.New((runtime.GOMAXPROCS(0) + 3) / 4)
	// h1, not net/http's server: one goroutine and no buffer per waiting stream (docs/performance.md).
	// There is no write timeout: it would cut every long stream.
	s.srv = &h1.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.limits.readHeaderTimeout,
		IdleTimeout:       s.limits.idleTimeout,
		MaxHeaderBytes:    s.limits.maxHeaderBytes,
		TLSConfig:         s.cfg.TLS,
		ErrorLog:          newStdLogger(s.log),
		Refused:           s.refused,
	}
	if s.ds == nil {
		s.srv.Lean = s.serveLean
	}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, h1.ErrServerClosed) {
			s.log.WithError(err).Error("server stopped")
		}
	}()
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops accepting, waits for running requests and streams until ctx ends, then cancels what is
// left, and closes the upstream connections.
func (s *Server) Close(ctx context.Context) error {
	var err error
	if s.srv != nil {
		if err = s.srv.Shutdown(ctx); err != nil {
			s.srv.Close()
		}
	}
	if s.relay != nil {
		s.relay.Close()
	}
	s.upstream.close()
	s.admin.CloseIdleConnections()
	return err
}

// handleHealth answers GET /health: the proxy's own health, so a proxy can be a replica of another.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "healthy"})
}
