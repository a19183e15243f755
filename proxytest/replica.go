// Package proxytest holds in-process fakes of the servers lmproxy talks to,
// for the project's tests, the demo and load simulation.
package proxytest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// ReplicaConfig configures a simulated replica. Zero values get defaults.
type ReplicaConfig struct {
	Host     string             // default "127.0.0.1"
	Port     int                // 0 = any free port
	Models   []string           // default []string{"sim-model"}
	Role     string             // "Hybrid" (default), "Prefill", "Decode"; registered as 1, 2, 3
	Speed    float64            // sent as status.speed when > 0
	TTFT     time.Duration      // delay before the first token
	ITL      time.Duration      // delay between tokens
	Tokens   int                // tokens per answer, default 16
	TPSize   int                // tensor parallelism /distserve/engine_info reports, default 1
	ProxyURL string             // when set, register with {ProxyURL}/nodes/add and leave on Close
	AdminKey string             // optional Bearer key for the proxy's /nodes/* calls
	Logger   logrus.FieldLogger // default: discard
	// MaxRecorded bounds what Received keeps (the most recent requests), so
	// long demos and load simulations do not grow without end; 0 keeps all.
	MaxRecorded int
	// OnTerminate, when set, is called each time GET /terminate is answered 200, on that
	// request's goroutine before its answer is sent. It should only signal (cancel a context):
	// Close waits for that answer. `lmproxy replica` exits through it, as LMDeploy's api_server
	// does; without it the replica keeps serving.
	OnTerminate func()
}

// Fault makes the inference endpoints (every POST /v1/*) misbehave.
// Fault{} means no fault. Hang wins over Status, Status over CutAfter.
type Fault struct {
	Status int    // answer with this status and Body before any event
	Body   string // JSON body for Status; empty = an LMDeploy error body
	// CutAfter > 0: a stream is broken after this many SSE events (counting
	// the usage event and [DONE]) with no chunked terminator, so the client
	// sees a read error; a non-stream answer is broken before any byte.
	// CutAfter < 0 breaks any answer before its first byte.
	CutAfter int
	Hang     bool // never answer; wait for the request context to end
}

// Received is one request the replica recorded.
type Received struct {
	Method           string
	Path             string
	Header           http.Header
	Body             []byte
	MigrationRequest json.RawMessage // the body's "migration_request", nil if absent
}

// Replica is a simulated LMDeploy api_server. Create it with NewReplica and
// Start it; every setter and getter is safe for concurrent use.
type Replica struct {
	URL string // "http://127.0.0.1:PORT", set by Start

	cfg  ReplicaConfig
	log  logrus.FieldLogger
	next chan Received

	mu              sync.Mutex
	health          string
	fault           Fault
	ttft, itl       time.Duration
	tokens          int
	models          []string
	terminateStatus int
	engineInfoStr   bool
	dsFaults        map[string]int
	received        []Received
	peers           map[string]bool // remote engine id -> p2p_connect done
	cached          map[int64]bool  // prefill sessions whose KV cache is kept
	started         bool

	seq        atomic.Int64
	cancelled  atomic.Int64
	active     atomic.Int64
	terminated atomic.Bool
	registered atomic.Bool
	closing    atomic.Bool

	role       int
	routes     map[string]route
	srv        *http.Server
	client     *http.Client
	transport  *http.Transport
	cancelBase context.CancelFunc
	cancelReg  context.CancelFunc
	regDone    chan struct{}
	// regUnsure is set when a registration attempt was cut short by Close:
	// the proxy may have added us without our seeing its answer.
	regUnsure atomic.Bool
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// NewReplica returns a replica with cfg's defaults filled in; call Start.
func NewReplica(cfg ReplicaConfig) *Replica {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if len(cfg.Models) == 0 {
		cfg.Models = []string{"sim-model"}
	}
	if cfg.Role == "" {
		cfg.Role = "Hybrid"
	}
	if cfg.Tokens <= 0 {
		cfg.Tokens = 16
	}
	lg := cfg.Logger
	if lg == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		lg = l
	}
	return &Replica{
		cfg:             cfg,
		log:             lg,
		next:            make(chan Received, 256),
		health:          "healthy",
		ttft:            cfg.TTFT,
		itl:             cfg.ITL,
		tokens:          cfg.Tokens,
		models:          slices.Clone(cfg.Models),
		terminateStatus: http.StatusOK,
		// LMDeploy's engine_info handler returns model_dump_json(), which
		// FastAPI encodes again: the body is a JSON string.
		engineInfoStr: true,
		dsFaults:      map[string]int{},
		peers:         map[string]bool{},
		cached:        map[int64]bool{},
	}
}

// roleNumber maps a role name (or its number) to LMDeploy's EngineRole value.
func roleNumber(s string) (int, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "hybrid", "1":
		return 1, nil
	case "prefill", "2":
		return 2, nil
	case "decode", "3":
		return 3, nil
	}
	return 0, fmt.Errorf("proxytest: unknown role %q (want Hybrid, Prefill or Decode)", s)
}

// Start listens synchronously, so the replica accepts connections when Start
// returns, and serves in a goroutine. With ProxyURL set it registers in the
// background and never waits for the proxy.
func (r *Replica) Start() error {
	role, err := roleNumber(r.cfg.Role)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return errors.New("proxytest: replica already started")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(r.cfg.Host, strconv.Itoa(r.cfg.Port)))
	if err != nil {
		return fmt.Errorf("proxytest: listen: %w", err)
	}
	r.started = true
	r.role = role
	r.routes = r.routeTable()
	r.URL = "http://" + advertised(ln.Addr().(*net.TCPAddr))

	// Every request context derives from baseCtx, so Close can end handlers
	// that wait (hang, slow streams) and Shutdown never waits on them.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	r.cancelBase = cancelBase
	r.srv = &http.Server{
		Handler:           http.HandlerFunc(r.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		ErrorLog:          log.New(logWriter{r.log}, "", 0),
	}
	// A private transport, so Close can drop its idle connections and leak
	// no goroutine.
	r.transport = &http.Transport{MaxIdleConnsPerHost: 2}
	r.client = &http.Client{Transport: r.transport}

	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.WithError(err).Error("simulated replica: serve")
		}
	}()
	r.log.WithField("url", r.URL).Info("simulated replica listening")

	if r.cfg.ProxyURL != "" {
		regCtx, cancelReg := context.WithCancel(context.Background())
		r.cancelReg = cancelReg
		r.regDone = make(chan struct{})
		go r.registerLoop(regCtx)
	}
	return nil
}

// advertised is the address peers should use: a wildcard listen address is
// reached through loopback.
func advertised(a *net.TCPAddr) string {
	host := a.IP.String()
	if a.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// Close leaves the proxy (when registered), stops the registration loop,
// ends in-flight handlers, shuts the server down and waits for every
// goroutine the replica started. It is safe to call more than once.
func (r *Replica) Close() error {
	r.closeOnce.Do(func() { r.closeErr = r.close() })
	return r.closeErr
}

func (r *Replica) close() error {
	r.mu.Lock()
	started := r.started
	r.mu.Unlock()
	if !started {
		return nil
	}
	if r.cancelReg != nil {
		r.cancelReg()
		<-r.regDone
	}
	if r.registered.Load() || r.regUnsure.Load() {
		r.deregister()
	}
	// Handlers that end now were stopped by us, not by their client.
	r.closing.Store(true)
	r.cancelBase()
	// Handlers were just cancelled, so what Shutdown still waits for is mostly connections a client
	// dialed and never used (a proxy's pool dials ahead): they count as new, not idle, for 5 s.
	// Wait briefly, then close them.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var err error
	if r.srv.Shutdown(ctx) != nil {
		err = r.srv.Close()
	}
	r.wg.Wait()
	r.transport.CloseIdleConnections()
	r.log.WithField("url", r.URL).Info("simulated replica closed")
	return err
}

// Registered reports whether the proxy accepted the registration.
func (r *Replica) Registered() bool { return r.registered.Load() }

// StartReplica starts a replica for a test and closes it in tb.Cleanup.
func StartReplica(tb testing.TB, cfg ReplicaConfig) *Replica {
	tb.Helper()
	r := NewReplica(cfg)
	if err := r.Start(); err != nil {
		tb.Fatalf("start simulated replica: %v", err)
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Errorf("close simulated replica: %v", err)
		}
	})
	return r
}

// DeadAddr returns the URL of a loopback port that refuses connections: it
// was listened on and closed again.
func DeadAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		tb.Fatalf("close listener: %v", err)
	}
	return "http://" + addr
}

// HealthStatuses are the words SetHealth gives a meaning of its own, in the order its comment
// gives them.
var HealthStatuses = []string{"healthy", "sleeping", "initializing", "unhealthy", "empty", "error", "hang"}

// SetHealth chooses what GET /health answers: "healthy" (default) and
// "sleeping" 200 with {"status":...}; "initializing", "unhealthy" and any
// other word 503 with {"status":...} as LMDeploy does; "empty" 200 with no
// body (older servers); "error" 500 without JSON; "hang" no answer until
// the request context ends.
func (r *Replica) SetHealth(status string) {
	r.mu.Lock()
	r.health = status
	r.mu.Unlock()
}

// SetFault sets the fault of the inference endpoints until changed.
func (r *Replica) SetFault(f Fault) {
	r.mu.Lock()
	r.fault = f
	r.mu.Unlock()
}

// SetTiming changes the time to first token, the inter-token delay and the
// tokens per answer (tokens <= 0 means 16) for requests that start later.
func (r *Replica) SetTiming(ttft, itl time.Duration, tokens int) {
	if tokens <= 0 {
		tokens = 16
	}
	r.mu.Lock()
	r.ttft, r.itl, r.tokens = ttft, itl, tokens
	r.mu.Unlock()
}

// SetModels changes what /v1/models answers and which models are served.
func (r *Replica) SetModels(models []string) {
	r.mu.Lock()
	r.models = slices.Clone(models)
	r.mu.Unlock()
}

// SetTerminateStatus sets the status GET /terminate answers (default 200).
func (r *Replica) SetTerminateStatus(status int) {
	r.mu.Lock()
	r.terminateStatus = status
	r.mu.Unlock()
}

// SetEngineInfoAsString chooses the body of GET /distserve/engine_info: a
// JSON string holding the JSON object (true, the default, what LMDeploy
// sends) or the object itself (false).
func (r *Replica) SetEngineInfoAsString(asString bool) {
	r.mu.Lock()
	r.engineInfoStr = asString
	r.mu.Unlock()
}

// SetDistServeFault makes one /distserve/* endpoint ("p2p_connect" or
// "/distserve/p2p_connect") answer status with an error body; 0 clears it.
func (r *Replica) SetDistServeFault(path string, status int) {
	if !strings.HasPrefix(path, "/") {
		path = "/distserve/" + path
	}
	r.mu.Lock()
	if status == 0 {
		delete(r.dsFaults, path)
	} else {
		r.dsFaults[path] = status
	}
	r.mu.Unlock()
}

// Received returns a copy of every request received on /v1/* and
// /distserve/*, in arrival order (GET /v1/models included: filter by Path).
func (r *Replica) Received() []Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.recent())
}

// Requests returns the received requests whose path is path.
func (r *Replica) Requests(path string) []Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Received
	for _, rec := range r.recent() {
		if rec.Path == path {
			out = append(out, rec)
		}
	}
	return out
}

// recent is the recorded requests within MaxRecorded; r.mu must be held.
func (r *Replica) recent() []Received {
	if limit := r.cfg.MaxRecorded; limit > 0 && len(r.received) > limit {
		return r.received[len(r.received)-limit:]
	}
	return r.received
}

// Cancelled counts /v1/* and /distserve/* requests that ended because the
// client went away before the answer was written (Close is not counted).
func (r *Replica) Cancelled() int64 { return r.cancelled.Load() }

// Active counts the POST /v1/* handlers running now.
func (r *Replica) Active() int64 { return r.active.Load() }

// Terminated reports whether GET /terminate was answered 200.
func (r *Replica) Terminated() bool { return r.terminated.Load() }

// NextRequest delivers each POST /v1/* request as it arrives, before any
// delay or fault. The buffer holds 256; when it is full, records are dropped.
func (r *Replica) NextRequest() <-chan Received { return r.next }

// Connected reports whether p2p_connect succeeded for that remote engine id
// (and no p2p_drop_connect followed).
func (r *Replica) Connected(remoteEngineID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peers[remoteEngineID]
}

// CachedSessions lists the prefill sessions whose KV cache is kept
// (with_cache and preserve_cache) and not yet freed by /distserve/free_cache.
func (r *Replica) CachedSessions() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int64
	for id := range r.cached {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// logWriter sends net/http's own log lines (panics, accept errors) to the
// replica's logger instead of stderr.
type logWriter struct{ l logrus.FieldLogger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}
