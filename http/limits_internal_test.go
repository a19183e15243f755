package http

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthdm/hollywood/actor"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// These tests live inside the package because they set a server's limits to milliseconds, and
// register routes that panic, neither of which the public surface allows. (proxytest cannot be used
// here: it imports this package.)

// limitWait bounds every wait of these tests.
const limitWait = 5 * time.Second

// streamingReplica streams events tokens apart and counts the requests it saw cancelled.
type streamingReplica struct {
	*httptest.Server
	events    int
	itl       time.Duration
	cancelled atomic.Int64
}

func startStreamingReplica(t *testing.T, events int, itl time.Duration) *streamingReplica {
	r := &streamingReplica{events: events, itl: itl}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/health" {
			io.WriteString(w, `{"status":"healthy"}`)
			return
		}
		io.Copy(io.Discard, req.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for i := 0; i < r.events; i++ {
			if i > 0 {
				select {
				case <-req.Context().Done():
					r.cancelled.Add(1)
					return
				case <-time.After(r.itl):
				}
			}
			fmt.Fprintf(w, "data: {\"i\":%d}\n\n", i)
			rc.Flush()
		}
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(r.Close)
	return r
}

// limitedServer is a Server with the given limits over a registry that knows replicas, each healthy
// and serving model "m".
type limitedServer struct {
	*Server
	url string
	log *logtest.Hook
}

func startLimited(t *testing.T, limits serverLimits, replicas ...string) *limitedServer {
	t.Helper()
	e, err := actor.NewEngine(actor.NewEngineConfig())
	require.NoError(t, err)
	log, hook := logtest.NewNullLogger()
	reg := actors.SpawnRegistry(e, actors.Config{HealthInterval: time.Hour, Log: log})
	s := New(Config{Log: log}, reg)
	s.limits = limits
	require.NoError(t, s.Open("127.0.0.1:0"))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), limitWait)
		defer cancel()
		s.Close(ctx)
		actors.StopRegistry(e, reg.PID())
	})
	for _, u := range replicas {
		require.NoError(t, reg.Register(context.Background(),
			messages.Registration{URL: u, Models: []string{"m"}, Role: messages.Hybrid}, messages.HealthHealthy))
	}
	return &limitedServer{Server: s, url: "http://" + s.Addr().String(), log: hook}
}

// unfinished sums the in-flight counts of every replica.
func (s *limitedServer) unfinished(t *testing.T) int {
	t.Helper()
	st, err := s.reg.Status(context.Background(), true)
	require.NoError(t, err)
	n := 0
	for _, rs := range st {
		n += rs.Unfinished
	}
	return n
}

// readUntilClosed reads conn until the server closes it and returns what it read and when it saw
// the close; it fails the test if the server keeps the connection past limitWait.
func readUntilClosed(t *testing.T, conn net.Conn) ([]byte, time.Time) {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(limitWait)))
	b, err := io.ReadAll(conn)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server kept the connection open for %v", limitWait)
	return b, time.Now()
}

// The limits every server runs with: headers have a deadline and a size bound, idle connections are
// closed, and nothing bounds the time a response may take.
func TestServerLimitsOfEveryServer(t *testing.T) {
	s := startLimited(t, defaultLimits)
	require.Equal(t, 10*time.Second, s.srv.ReadHeaderTimeout)
	require.Equal(t, 120*time.Second, s.srv.IdleTimeout)
	require.Equal(t, 1<<20, s.srv.MaxHeaderBytes)
}

// A client that sends its headers slower than ReadHeaderTimeout (slowloris), even one that never
// stops trickling bytes, is disconnected when the time is up.
func TestReadHeaderTimeoutDisconnectsSlowHeaders(t *testing.T) {
	const limit = 100 * time.Millisecond
	s := startLimited(t, serverLimits{readHeaderTimeout: limit, idleTimeout: time.Hour, maxHeaderBytes: 1 << 20})
	start := time.Now() // before the dial: the server's deadline cannot start earlier than this
	conn, err := net.Dial("tcp", s.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n")
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := io.WriteString(conn, "X"); err != nil {
					return // the server hung up
				}
			}
		}
	}()
	got, closed := readUntilClosed(t, conn)
	close(stop)
	<-trickled
	require.GreaterOrEqual(t, closed.Sub(start), limit)
	// net/http either just closes or, when the deadline hit in the middle of a line, says 400 first.
	if len(got) > 0 {
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(got))), nil)
		require.NoError(t, err, "%q", got)
		resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.True(t, resp.Close, "the connection is closed after it")
	}
}

// A keep-alive connection that carries no request for IdleTimeout is closed; one whose request is a
// stream that lasts far longer than every limit is not.
func TestIdleTimeoutClosesIdleConnectionsOnly(t *testing.T) {
	const limit = 100 * time.Millisecond
	rep := startStreamingReplica(t, 10, 50*time.Millisecond) // 450 ms: over 4 times every limit
	s := startLimited(t, serverLimits{readHeaderTimeout: limit, idleTimeout: limit, maxHeaderBytes: 1 << 20}, rep.URL)

	conn, err := net.Dial("tcp", s.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	body := `{"model":"m","stream":true}`
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	events, err := io.ReadAll(resp.Body) // a chunked answer: this ends at its terminator, not at a close
	require.NoError(t, err)
	require.Equal(t, 11, strings.Count(string(events), "data: "), "every event and [DONE]: %s", events)
	require.True(t, strings.HasSuffix(string(events), "data: [DONE]\n\n"))
	answered := time.Now()

	// Now the connection is idle.
	rest, closed := readUntilClosed(t, conn)
	require.Empty(t, rest)
	require.Zero(t, br.Buffered())
	require.GreaterOrEqual(t, closed.Sub(answered), limit-10*time.Millisecond, "closed for being idle, not early")
	require.Zero(t, rep.cancelled.Load())
	require.Eventually(t, func() bool { return s.unfinished(t) == 0 }, limitWait, time.Millisecond)
}

// MaxHeaderBytes is what bounds the headers: over it, 431 from net/http; under it, served.
func TestMaxHeaderBytes(t *testing.T) {
	s := startLimited(t, serverLimits{readHeaderTimeout: limitWait, idleTimeout: limitWait, maxHeaderBytes: 4 << 10})
	send := func(header int) int {
		conn, err := net.Dial("tcp", s.Addr().String())
		require.NoError(t, err)
		defer conn.Close()
		go fmt.Fprintf(conn, "GET /health HTTP/1.1\r\nHost: proxy\r\nX-Pad: %s\r\n\r\n", strings.Repeat("p", header))
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(limitWait)))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, send(2<<10))
	// net/http allows 4 KiB of slack over MaxHeaderBytes.
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, send(16<<10))
}

// panicOnceWriter panics the first time the handler asks for its headers, as a bug of ours in the
// middle of forwarding would, and behaves afterwards, so the recovery can still answer.
type panicOnceWriter struct {
	http.ResponseWriter
	armed atomic.Bool
}

func (p *panicOnceWriter) Header() http.Header {
	if p.armed.CompareAndSwap(true, false) {
		panic("simulated bug")
	}
	return p.ResponseWriter.Header()
}

// Every handler panic is recovered: before the answer began, into a 500 with the error body of the
// path (OpenAI's on /v1/*, {"detail"} elsewhere); after, into a broken connection rather than an
// answer that looks complete. A panic while a request holds a replica releases it, does not count
// against the replica, and cancels the upstream request. The server goes on serving.
func TestHandlerPanicsAreRecovered(t *testing.T) {
	rep := startStreamingReplica(t, 3, time.Hour)
	s := startLimited(t, defaultLimits, rep.URL)
	s.router.HandleFunc("/v1/test/panic", func(http.ResponseWriter, *http.Request) { panic("before the answer") }).Methods(http.MethodGet)
	s.router.HandleFunc("/test/panic", func(http.ResponseWriter, *http.Request) { panic(errors.New("before the answer")) })
	s.router.HandleFunc("/v1/test/panic-mid-answer", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {}\n\n")
		http.NewResponseController(w).Flush()
		panic("mid-answer")
	}).Methods(http.MethodGet)
	// Outside /v1/, or the catch-all POST /v1/{path} route would take it; it then runs the real
	// inference handler, on the URL the recovery sees too.
	s.router.HandleFunc("/test/panic-forwarding", func(w http.ResponseWriter, r *http.Request) {
		t := track(w)
		pw := &panicOnceWriter{ResponseWriter: t.ResponseWriter}
		pw.armed.Store(true)
		t.ResponseWriter = pw
		r.URL.Path = "/v1/chat/completions"
		s.handleInference(w, r)
	}).Methods(http.MethodPost)

	get := func(path string) (int, []byte, error) {
		resp, err := http.Get(s.url + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	requireServing := func() {
		code, _, err := get("/health")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code)
	}

	code, body, err := get("/v1/test/panic")
	require.NoError(t, err)
	require.Equal(t, http.StatusInternalServerError, code)
	require.JSONEq(t, string(openAIErrorBody(500, "internal error")), string(body))
	requireServing()

	code, body, err = get("/test/panic")
	require.NoError(t, err)
	require.Equal(t, http.StatusInternalServerError, code)
	require.JSONEq(t, `{"detail":"internal error"}`, string(body))
	requireServing()

	code, body, err = get("/v1/test/panic-mid-answer")
	require.Equal(t, http.StatusOK, code, "the status was sent before the panic")
	require.ErrorIs(t, err, io.ErrUnexpectedEOF, "a broken connection, not a clean end: %q", body)
	requireServing()

	resp, err := http.Post(s.url+"/test/panic-forwarding", "application/json", strings.NewReader(`{"model":"m","stream":true}`))
	require.NoError(t, err)
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode, string(body))
	require.JSONEq(t, string(openAIErrorBody(500, "internal error")), string(body))
	require.Eventually(t, func() bool { return s.unfinished(t) == 0 }, limitWait, time.Millisecond, "the lease was released")
	require.Eventually(t, func() bool { return rep.cancelled.Load() == 1 }, limitWait, time.Millisecond,
		"the upstream request was cancelled")
	st, err := s.reg.Status(context.Background(), true)
	require.NoError(t, err)
	require.Equal(t, messages.CircuitClosed, st[0].Circuit, "our panic is not the replica's fault")
	requireServing()

	var logged int
	for _, e := range s.log.AllEntries() {
		if strings.HasPrefix(e.Message, "handler panicked") {
			logged++
			require.NotEmpty(t, e.Data["stack"])
		}
	}
	require.Equal(t, 4, logged, "each panic is logged with its stack")
}
