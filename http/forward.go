package http

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lmproxy/lmproxy/http/relay"
	"github.com/lmproxy/lmproxy/messages"
)

// errClientGone means the client left before anything was decided: there is nobody to answer.
var errClientGone = errors.New("client left")

// readRequest reads a JSON body up to --max-body and its routing fields.
func (s *Server) readRequest(w http.ResponseWriter, r *http.Request) ([]byte, requestFields, error) {
	body, err := readJSONBody(w, r, s.cfg.MaxBody)
	if err != nil {
		return nil, requestFields{}, err
	}
	f, err := parseFields(body)
	return body, f, err
}

// readJSONBody checks the Content-Type (checkJSONContentType) and reads the body up to limit: the
// one rule of the inference routes and the admin bodies.
func readJSONBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if err := checkJSONContentType(r.Header.Get("Content-Type")); err != nil {
		return nil, err
	}
	return readBodyUpTo(w, r, limit)
}

// readBodyUpTo reads the whole request body: 413 when it is larger than limit (a declared length
// says so before any byte is read), 400 when it cannot be read.
func readBodyUpTo(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, errTooLarge(limit)
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, limit), r.ContentLength)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, errTooLarge(limit)
		}
		return nil, errorf(http.StatusBadRequest, "cannot read request body: "+err.Error())
	}
	return body, nil
}

// checkJSONContentType answers 415 to a Content-Type that is not JSON: application/json or any +json
// type passes, with parameters or without, and so does no Content-Type at all.
func checkJSONContentType(ct string) error {
	// The common exact value skips the media-type parser (it allocates a parameter map).
	if ct == "" || ct == "application/json" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return errorf(http.StatusUnsupportedMediaType, "Content-Type must be application/json, not "+ct)
	}
	return nil
}

func errTooLarge(limit int64) error {
	return errorf(http.StatusRequestEntityTooLarge, "request body is larger than the limit of "+formatBytes(limit))
}

// readBody reads all of r into a buffer of the declared length: a large body is not copied while
// growing, and a short one takes no more memory than it needs. The length is the body's framing,
// checked by the server: the body ends there.
func readBody(r io.Reader, length int64) ([]byte, error) {
	if length <= 0 || length > 64<<20 {
		return io.ReadAll(r)
	}
	b := make([]byte, length)
	n, err := io.ReadFull(r, b)
	return b[:n], err
}

// acquire asks the registry for a replica and turns a refusal into the error the client gets.
func (s *Server) acquire(w http.ResponseWriter, r *http.Request, model string, role messages.Role, not string) (messages.Lease, error) {
	start := time.Now()
	a, err := s.reg.Acquire(r.Context(), model, role, not)
	s.cfg.Metrics.Routing(time.Since(start))
	if err != nil {
		if r.Context().Err() != nil {
			return a.Lease, errClientGone
		}
		return a.Lease, errorf(http.StatusServiceUnavailable, "the proxy is overloaded: "+err.Error())
	}
	if a.Status == messages.AcquireOK {
		track(w).model = model
	}
	return a.Lease, acquireError(a.Status, model, role)
}

// retryUnreachable runs try on the leased replica and, when that replica could not be reached
// (DialError: nothing was sent to it, nothing written to the client), once more on another replica
// of role serving model (SPEC §7). A request that reached a replica is never sent again. Without
// another replica, the first failure stands. try releases the lease it is given, and returns how
// the exchange went for the replica and the error to answer with, if it did not answer itself.
func (s *Server) retryUnreachable(w http.ResponseWriter, r *http.Request, model string, role messages.Role,
	l messages.Lease, try func(messages.Lease) (messages.Outcome, error)) error {
	o, err := try(l)
	if o != messages.DialError {
		return err
	}
	t := track(w)
	s.log.WithFields(map[string]any{"request_id": t.id, "replica": l.URL}).WithError(err).
		Warn("replica unreachable; trying another")
	next, aerr := s.acquire(w, r, model, role, l.URL)
	switch {
	case errors.Is(aerr, errClientGone):
		return aerr
	case aerr != nil:
		return err // no other replica
	}
	// The retry replaces the failed attempt in the access log and the request metrics, so count that
	// failure now, or a replica that refuses every connection never shows in them.
	s.cfg.Metrics.UpstreamError(l.URL, o)
	t.decided = false
	_, err = try(next)
	return err
}

// failRequest answers a request that failed before a replica answered it; a client that left gets
// nothing.
func failRequest(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, errClientGone) {
		track(w).setOutcome(messages.ClientGone)
		return
	}
	writeError(w, r, err)
}

// acquireError maps a registry refusal to 404 (model unknown) or 503 (no replica can take it now).
func acquireError(st messages.AcquireStatus, model string, role messages.Role) error {
	model = echoModel(model)
	switch st {
	case messages.UnknownModel:
		return errorf(http.StatusNotFound, "The model `"+model+"` does not exist.")
	case messages.NoRoutableReplica:
		return errorf(http.StatusServiceUnavailable, "no healthy "+role.String()+" replica is available for model `"+model+"`")
	}
	return nil
}

// maxEchoedModel bounds how much of a model name an error message repeats: the name is the client's,
// up to --max-body long, and the message goes into the answer (twice) and into the log line.
const maxEchoedModel = 256

// echoModel is model as error messages show it: cut to maxEchoedModel bytes on a rune boundary.
func echoModel(model string) string {
	if len(model) <= maxEchoedModel {
		return model
	}
	cut := maxEchoedModel
	for cut > 0 && !utf8.RuneStart(model[cut]) {
		cut--
	}
	return model[:cut] + "…"
}

// forwardResult is how one upstream exchange ended.
type forwardResult struct {
	outcome messages.Outcome
	dialErr error // set when nothing reached the replica and nothing was written: the caller may retry
	abort   bool  // the answer was cut after it began and cannot be ended cleanly: break the connection
}

// forwardLeased forwards the request to the leased replica and releases the lease exactly once,
// whatever happens, panics included. It returns how the exchange went for the replica and, when the
// replica could not be reached, the dial error: then nothing was sent to it and nothing written to
// the client, who is the caller's to answer. An answer cut after it began cannot be ended cleanly:
// forwardLeased breaks the client's connection (http.ErrAbortHandler).
func (s *Server) forwardLeased(w http.ResponseWriter, r *http.Request, l messages.Lease, body []byte, handed *handover) (messages.Outcome, error) {
	outcome, start := messages.Panic, time.Now()
	if handed != nil {
		start = handed.leased
	}
	defer func() { s.reg.Release(l, outcome, time.Since(start)) }()
	t := track(w)
	t.replica = l.URL
	res := s.forward(w, r, l.URL, body, handed)
	outcome = res.outcome
	t.setOutcome(outcome)
	if res.abort {
		panic(http.ErrAbortHandler)
	}
	return outcome, res.dialErr
}

// forward sends body to target and passes the answer back: status, headers and body unchanged, an
// event stream flushed as it arrives. With a handover, the lean path sent it already: forward goes
// on from the exchange it gives.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, target string, body []byte, handed *handover) forwardResult {
	t := track(w)
	var ctx context.Context
	var cancel context.CancelFunc
	var resp *http.Response
	var err error
	if handed != nil {
		ctx, cancel, resp, err = handed.ctx, handed.cancel, handed.resp, handed.err
	} else {
		ctx, cancel = s.upstreamContext(r.Context())
		var set [5]header
		hs := forwardedHeaders(set[:0], r, t.id)
		if len(body) > 0 && len(r.Header["Content-Type"]) == 0 {
			// Taken as JSON without one, as LMDeploy's proxy takes it; its api_server refuses a
			// request to a JSON endpoint that names none.
			hs = append(hs, header{"Content-Type", "application/json"})
		}
		out := replicaRequest{method: r.Method, target: target, uri: r.URL.RequestURI(), client: r, set: hs, body: body}
		resp, err = s.upstream.RoundTrip(ctx, &out)
	}
	defer cancel()
	if err != nil {
		return s.failedExchange(w, r, ctx, err)
	}
	defer resp.Body.Close()
	if handed != nil && handed.bodyErr != nil {
		t.ttft = handed.ttft
		return s.cutAnswer(w, r, ctx, target, handed.bodyErr)
	}

	events := isEventStream(resp.Header.Get("Content-Type"))
	flush := events || resp.ContentLength == -1
	// A compressed event stream (gzip behind nginx, say) is passed on as bytes: they never form the
	// lines an event is held back to, and no error event could be written into them.
	ce := resp.Header.Get("Content-Encoding")
	sse := events && (ce == "" || strings.EqualFold(ce, "identity"))
	// A short whole answer is read before anything is written: if the replica stops before its
	// Content-Length, the client still gets a clean error instead of a broken connection.
	readFirst := !flush && resp.ContentLength < bodyBufferSize
	var whole []byte
	if readFirst {
		bp := bodyBuffers.Get().(*[]byte)
		defer bodyBuffers.Put(bp)
		n, err := readWhole(t, resp.Body, *bp)
		if err != nil {
			return s.cutAnswer(w, r, ctx, target, err)
		}
		whole = (*bp)[:n]
	}

	h := w.Header()
	copyHeaders(h, resp.Header)
	h.Set("X-Request-Id", t.id)
	w.WriteHeader(resp.StatusCode)
	fl, _ := writerAs[flusher](t.ResponseWriter)
	if flush && fl != nil {
		fl.FlushError() // headers leave now, not with a slow first token
	}
	var rerr, werr error
	line, relayed := relay.EventEnd, false
	if flush {
		rerr, werr, line, relayed = s.relayBody(ctx, t, resp, sse)
	}
	switch {
	case relayed:
	case readFirst:
		_, werr = t.Write(whole)
	default:
		rerr, werr, line = copyBody(t, fl, resp.Body, flush, sse)
	}
	if !flush && rerr == nil && werr == nil && fl != nil {
		// The whole answer is written: it leaves now, not after the lease's release, the metrics
		// and the access log.
		werr = fl.FlushError()
	}

	res := forwardResult{outcome: statusOutcome(resp.StatusCode)}
	switch {
	case werr != nil || rerr != nil && r.Context().Err() != nil:
		// A client that leaves once it has the whole answer (its end is flushed before this) did
		// not leave early: only a cut answer is a disconnect.
		res.outcome = messages.ClientGone
	case rerr != nil:
		var status int
		var msg string
		status, msg, res.outcome = midAnswerError(ctx, rerr)
		if sse && resp.StatusCode < 300 && line != relay.MidLine {
			if line == relay.LineEnd {
				t.Write([]byte("\n")) // the replica's unfinished event ends before the error's
			}
			t.Write(sseErrorEvent(status, msg))
			if fl != nil {
				fl.FlushError()
			}
		} else {
			res.abort = true
		}
		s.log.WithFields(map[string]any{"request_id": t.id, "replica": target}).Warn(msg)
	}
	return res
}

// midAnswerError describes a replica that stopped inside its answer's body.
func midAnswerError(ctx context.Context, err error) (status int, msg string, outcome messages.Outcome) {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return http.StatusGatewayTimeout, "the replica did not finish within the upstream timeout", messages.Timeout
	}
	return http.StatusBadGateway, "the replica failed mid-answer: " + err.Error(), messages.UpstreamError
}

// readWhole reads a whole answer's body, shorter than buf, to its end. It records the time to the
// first byte.
func readWhole(t *tracked, body io.Reader, buf []byte) (int, error) {
	n := 0
	for {
		m, err := body.Read(buf[n:])
		if m > 0 && t.ttft == 0 {
			t.ttft = time.Since(t.start)
		}
		n += m
		switch {
		case err == io.EOF:
			return n, nil
		case err != nil:
			return n, err
		case n == len(buf):
			return n, errors.New("the answer is longer than its Content-Length")
		}
	}
}

// cutAnswer handles a whole answer that stopped before its end while nothing of it was written.
func (s *Server) cutAnswer(w http.ResponseWriter, r *http.Request, ctx context.Context, target string, err error) forwardResult {
	if r.Context().Err() != nil {
		return forwardResult{outcome: messages.ClientGone}
	}
	status, msg, outcome := midAnswerError(ctx, err)
	s.log.WithFields(map[string]any{"request_id": track(w).id, "replica": target}).Warn(msg)
	writeError(w, r, errorf(status, msg))
	return forwardResult{outcome: outcome}
}

// failedExchange handles a round trip that got no answer at all.
func (s *Server) failedExchange(w http.ResponseWriter, r *http.Request, ctx context.Context, err error) forwardResult {
	switch {
	case r.Context().Err() != nil:
		return forwardResult{outcome: messages.ClientGone}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		writeError(w, r, errorf(http.StatusGatewayTimeout, "the replica did not answer within the upstream timeout"))
		return forwardResult{outcome: messages.Timeout}
	case isDialError(err):
		return forwardResult{outcome: messages.DialError, dialErr: err}
	}
	writeError(w, r, errorf(http.StatusBadGateway, "the replica failed: "+err.Error()))
	return forwardResult{outcome: messages.UpstreamError}
}

// upstreamContext bounds one upstream request by --upstream-timeout; it ends when the client leaves.
func (s *Server) upstreamContext(parent context.Context) (context.Context, context.CancelFunc) {
	if s.upstream.timeout > 0 {
		return context.WithTimeout(parent, s.upstream.timeout)
	}
	// No timeout: the client's own context is enough, and the answer's body, always closed, ends
	// the exchange. A derived context would cost allocations per request for nothing.
	return parent, func() {}
}

// statusOutcome is what an answer's status says about the replica.
func statusOutcome(status int) messages.Outcome {
	switch {
	case status >= 500:
		return messages.UpstreamError
	case status >= 400:
		return messages.Rejected
	}
	return messages.OK
}
