package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/tidwall/gjson"
)

func init() {
	register(command{name: "loadtest", summary: "send a bounded load to a proxy or replica; report latency, TTFT and errors", run: runLoadtest})
}

// defaultLoadDuration bounds a run that names neither --duration nor --requests.
const defaultLoadDuration = 10 * time.Second

// loadtestOptions are the flags of `lmproxy loadtest`.
type loadtestOptions struct {
	url         string
	api         string
	concurrency int
	duration    time.Duration // 0: defaultLoadDuration, or no time bound when requests > 0
	requests    int           // 0: no count bound
	stream      bool
	model       string // "": the first model of GET /v1/models
	tokens      int
	apiKey      string
	timeout     time.Duration
	json        bool
	quiet       bool
}

// newLoadtestOptions returns the defaults and the flag set that fills them in.
func newLoadtestOptions() (*loadtestOptions, *flagSet) {
	o := &loadtestOptions{api: "chat", concurrency: 1, tokens: 16, timeout: time.Minute}
	s := newFlagSet("lmproxy loadtest", "Sends chat or completions requests from --concurrency clients until --requests are done\n"+
		"or --duration has passed, then prints latency and time-to-first-token percentiles, requests/s,\n"+
		"SSE events/s and errors by kind. A request counts as ok only if it is complete: status 200, a JSON\n"+
		"body with choices, or a stream that ends with data: [DONE] and carries no error event.\n"+
		"Exits 0 when every request was ok, 1 otherwise, 2 on a bad flag.")
	s.add(stringValue{p: &o.url, check: checkURL}, "url", "URL", "the proxy's (or a replica's) base URL, e.g. http://127.0.0.1:8000")
	s.add(enumValue{p: &o.api, choices: []string{"chat", "completions"}}, "api", "API",
		"chat (POST /v1/chat/completions) or completions (POST /v1/completions)")
	s.add(intValue{&o.concurrency, 1, math.MaxInt}, "concurrency", "N", "clients, each sending its next request when the last one ended")
	s.add(durationValue{p: &o.duration}, "duration", "DURATION", "stop sending after this long; requests under way may finish.\n"+
		"0 means "+defaultLoadDuration.String()+", or no time bound when --requests is given")
	s.add(intValue{&o.requests, 0, math.MaxInt}, "requests", "N", "stop after this many requests; 0 means no count bound")
	s.add(boolValue{&o.stream}, "stream", "", `send "stream": true and read the answers as server-sent events`)
	s.add(stringValue{p: &o.model}, "model", "NAME", "model to ask for; empty means the first of GET /v1/models")
	s.add(intValue{&o.tokens, 1, math.MaxInt}, "tokens", "N", "max_tokens of each request")
	s.add(stringValue{p: &o.apiKey}, "api-key", "KEY", "sent as Authorization: Bearer <key>").env("OPENAI_API_KEY", false)
	s.add(durationValue{&o.timeout, true}, "timeout", "DURATION", "one request's whole time; a request still running then is a timeout error")
	s.add(boolValue{&o.json}, "json", "", "print the summary as one JSON line instead of a table")
	s.add(boolValue{&o.quiet}, "quiet", "", "no progress bar (there is none either when stderr is not a terminal)")
	return o, s
}

// runLoadtest is `lmproxy loadtest`.
func runLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, s := newLoadtestOptions()
	if err := s.parse(args); err != nil {
		return s.exit(err, stdout, stderr)
	}
	if o.url == "" {
		return s.exit(errors.New("--url is required"), stdout, stderr)
	}
	if o.duration == 0 && o.requests == 0 {
		o.duration = defaultLoadDuration
	}
	l := newLoadRun(ctx, o)
	defer l.client.CloseIdleConnections()
	if o.model == "" {
		m, err := l.firstModel()
		if err != nil {
			fmt.Fprintf(stderr, "lmproxy loadtest: no --model given and %v\n", err)
			return 1
		}
		o.model = m
	}
	l.body = requestBody(o)

	var bar io.Writer
	if !o.quiet && isTerminal(stderr) {
		bar = stderr
	}
	rep := l.run(bar)
	if o.json {
		b, _ := json.Marshal(rep)
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		rep.printTable(stdout)
	}
	if rep.Errors > 0 || rep.OK == 0 {
		return 1
	}
	return 0
}

// isTerminal reports whether w is a character device, as a terminal is. A progress bar written to a
// file or pipe would fill it with carriage-return noise.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// requestBody is the one body every request sends: a short prompt, so the answer's length (max_tokens)
// decides the work.
func requestBody(o *loadtestOptions) []byte {
	req := map[string]any{"model": o.model, "max_tokens": o.tokens, "stream": o.stream, "temperature": 0}
	const prompt = "Say hello to the load test in a few words, please."
	if o.api == "completions" {
		req["prompt"] = prompt
	} else {
		req["messages"] = []map[string]string{{"role": "user", "content": prompt}}
	}
	b, _ := json.Marshal(req)
	return b
}

// loadRun is one load test: its clients share the connection pool and the bounds.
type loadRun struct {
	o        *loadtestOptions
	ctx      context.Context // ends on SIGINT/SIGTERM: requests then under way are not counted
	base     string
	endpoint string
	body     []byte
	client   *http.Client

	start    time.Time
	deadline time.Time // zero: no time bound
	issued   atomic.Int64
	ok       atomic.Int64 // for the progress bar; the report counts from the clients' own tallies
	failed   atomic.Int64
}

func newLoadRun(ctx context.Context, o *loadtestOptions) *loadRun {
	base := strings.TrimRight(o.url, "/")
	path := "/v1/chat/completions"
	if o.api == "completions" {
		path = "/v1/completions"
	}
	tr := &http.Transport{
		// The target is measured directly: an HTTP proxy from the environment would be measured too.
		Proxy:       nil,
		DialContext: (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext,
		// Every client keeps its connection between requests, as a real client pool would, so the
		// run measures requests and not connection setup.
		MaxIdleConnsPerHost: o.concurrency,
		IdleConnTimeout:     90 * time.Second,
		// Bodies are counted and parsed as sent.
		DisableCompression: true,
	}
	return &loadRun{o: o, ctx: ctx, base: base, endpoint: base + path, client: &http.Client{Transport: tr}}
}

// firstModel asks the target's GET /v1/models for the model to load.
func (l *loadRun) firstModel() (string, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.o.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.base+"/v1/models", nil)
	if err != nil {
		return "", err
	}
	l.authorize(req)
	resp, err := l.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("GET /v1/models failed: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /v1/models answered %s", resp.Status)
	}
	if id := gjson.GetBytes(b, "data.0.id").String(); id != "" {
		return id, nil
	}
	return "", errors.New("GET /v1/models lists no model")
}

func (l *loadRun) authorize(req *http.Request) {
	if l.o.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+l.o.apiKey)
	}
}

// Error kinds, as the JSON report names them; a status other than 200 is "http_<status>".
const (
	kindConnect     = "connect"      // the connection could not be opened
	kindTimeout     = "timeout"      // --timeout passed before the answer was complete
	kindStreamError = "stream_error" // an SSE event carried an "error" object
	kindShortStream = "short_stream" // the stream ended or broke before data: [DONE]
	kindBadBody     = "bad_body"     // a non-stream body that did not arrive whole or is not a completion
	kindTransport   = "transport"    // any other failure before an answer, e.g. a reset connection
)

// kindLabels are the kinds as the table names them.
var kindLabels = map[string]string{
	kindConnect:     "connect error",
	kindTimeout:     "timeout",
	kindStreamError: "stream error event",
	kindShortStream: "short stream",
	kindBadBody:     "bad body",
	kindTransport:   "transport error",
}

// result is how one request went. kind is empty for an ok request.
type result struct {
	latency, ttft time.Duration
	events        int // SSE data events other than [DONE]
	kind, msg     string
	interrupted   bool // the run was stopped under it: neither ok nor an error
}

// tally is one client's results; each client has its own, so recording takes no lock.
type tally struct {
	latency, ttft []time.Duration
	events        int
	kinds         map[string]int
	samples       []string
}

// maxErrorSamples bounds the distinct error messages a report quotes: enough to tell causes apart.
const maxErrorSamples = 5

// run drives the clients until a bound is reached and returns the report. With bar set, a progress
// bar is drawn there while the clients run, and cleared before run returns.
func (l *loadRun) run(bar io.Writer) loadReport {
	l.start = time.Now()
	if l.o.duration > 0 {
		l.deadline = l.start.Add(l.o.duration)
	}
	if bar != nil {
		defer l.showProgress(bar)()
	}
	tallies := make([]tally, l.o.concurrency)
	var wg sync.WaitGroup
	for i := range tallies {
		t := &tallies[i]
		t.kinds = map[string]int{}
		wg.Go(func() {
			for l.next() {
				r := l.one()
				switch {
				case r.interrupted:
					return
				case r.kind == "":
					l.ok.Add(1)
					t.latency = append(t.latency, r.latency)
					t.ttft = append(t.ttft, r.ttft)
					t.events += r.events
				default:
					l.failed.Add(1)
					t.kinds[r.kind]++
					if len(t.samples) < maxErrorSamples && !slices.Contains(t.samples, r.msg) {
						t.samples = append(t.samples, r.msg)
					}
				}
			}
		})
	}
	wg.Wait()
	return l.report(tallies, time.Since(l.start))
}

// next reports whether a client may start another request, and counts it.
func (l *loadRun) next() bool {
	if l.ctx.Err() != nil || (!l.deadline.IsZero() && !time.Now().Before(l.deadline)) {
		return false
	}
	return l.o.requests == 0 || l.issued.Add(1) <= int64(l.o.requests)
}

// one sends one request and reads its whole answer.
func (l *loadRun) one() result {
	ctx, cancel := context.WithTimeout(l.ctx, l.o.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.endpoint, bytes.NewReader(l.body))
	if err != nil {
		return result{kind: kindTransport, msg: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	if l.o.stream {
		req.Header.Set("Accept", "text/event-stream")
	}
	l.authorize(req)
	start := time.Now()
	resp, err := l.client.Do(req)
	if err != nil {
		return l.failure(ctx, err, kindTransport)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return result{kind: "http_" + strconv.Itoa(resp.StatusCode), msg: fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))}
	}
	if l.o.stream {
		return l.readStream(ctx, resp.Body, start)
	}
	// As in the bench harness, a non-stream answer's first token is its response header.
	ttft := time.Since(start)
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return l.failure(ctx, err, kindBadBody)
	}
	if !gjson.GetBytes(b, "choices.0").Exists() {
		return result{kind: kindBadBody, msg: fmt.Sprintf("not a completion: %.200s", b)}
	}
	return result{latency: time.Since(start), ttft: ttft}
}

// maxEventLine bounds one SSE line; a longer one is not an answer this tool understands.
const maxEventLine = 1 << 20

// readStream reads server-sent events up to data: [DONE]. The stream is complete only if it gets
// there without an event that carries an "error" object.
func (l *loadRun) readStream(ctx context.Context, body io.Reader, start time.Time) result {
	var r result
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 16<<10), maxEventLine)
	for sc.Scan() {
		data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data:"))
		if !ok {
			continue
		}
		data = bytes.TrimSpace(data)
		if string(data) == "[DONE]" {
			r.latency = time.Since(start)
			// Read the end of the chunked body so the connection goes back to the pool.
			io.Copy(io.Discard, io.LimitReader(body, maxEventLine))
			return r
		}
		r.events++
		if r.events == 1 {
			r.ttft = time.Since(start)
		}
		// The cheap test first: most events have no "error" anywhere.
		if bytes.Contains(data, []byte(`"error"`)) && gjson.GetBytes(data, "error").Exists() {
			return result{kind: kindStreamError, msg: fmt.Sprintf("after %d events: %.200s", r.events-1, data)}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return result{kind: kindBadBody, msg: "an SSE line is longer than 1MiB"}
		}
		f := l.failure(ctx, err, kindShortStream)
		f.msg = fmt.Sprintf("after %d events: %s", r.events, f.msg)
		return f
	}
	return result{kind: kindShortStream, msg: fmt.Sprintf("the stream ended after %d events without data: [DONE]", r.events)}
}

// failure names the kind of a failed exchange: a run that is stopping, the request's timeout and a
// failed dial have their own kinds; anything else is other.
func (l *loadRun) failure(ctx context.Context, err error, other string) result {
	var op *net.OpError
	switch {
	case l.ctx.Err() != nil:
		return result{interrupted: true}
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return result{kind: kindTimeout, msg: "no complete answer within --timeout " + l.o.timeout.String()}
	case errors.As(err, &op) && op.Op == "dial":
		return result{kind: kindConnect, msg: err.Error()}
	}
	return result{kind: other, msg: err.Error()}
}

// showProgress draws a bar on w until the returned function is called. It moves with whichever
// bound comes first, the count or the time.
func (l *loadRun) showProgress(w io.Writer) (stop func()) {
	const steps = 1000
	bar := progressbar.NewOptions(steps, progressbar.OptionSetWriter(w), progressbar.OptionSetWidth(30),
		progressbar.OptionSetPredictTime(false), progressbar.OptionSetElapsedTime(true))
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				bar.Clear()
				return
			case <-tick.C:
			}
			frac := 0.0
			if !l.deadline.IsZero() {
				frac = time.Since(l.start).Seconds() / l.o.duration.Seconds()
			}
			ok, failed := l.ok.Load(), l.failed.Load()
			if l.o.requests > 0 {
				frac = max(frac, float64(ok+failed)/float64(l.o.requests))
			}
			bar.Describe(fmt.Sprintf("%d ok, %d errors", ok, failed))
			bar.Set(int(min(frac, 1) * steps))
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// percentiles of a latency, in milliseconds.
type percentiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// loadReport is the summary of a run; --json prints it as one line.
type loadReport struct {
	URL          string         `json:"url"`
	Model        string         `json:"model"`
	Stream       bool           `json:"stream"`
	Concurrency  int            `json:"concurrency"`
	MaxTokens    int            `json:"max_tokens"`
	Requests     int            `json:"requests"` // ok + errors
	OK           int            `json:"ok"`
	Errors       int            `json:"errors"`
	ErrorsByKind map[string]int `json:"errors_by_kind"`
	ElapsedS     float64        `json:"elapsed_s"`
	RequestsPerS float64        `json:"requests_per_s"` // ok requests
	Events       int            `json:"events"`         // SSE data events of the ok requests, [DONE] not counted
	EventsPerS   float64        `json:"events_per_s"`
	LatencyMs    percentiles    `json:"latency_ms"`
	TTFTMs       percentiles    `json:"ttft_ms"`
	ErrorSamples []string       `json:"error_samples,omitempty"`
	Interrupted  bool           `json:"interrupted,omitempty"`
}

func (l *loadRun) report(tallies []tally, elapsed time.Duration) loadReport {
	r := loadReport{
		URL: l.endpoint, Model: l.o.model, Stream: l.o.stream, Concurrency: l.o.concurrency, MaxTokens: l.o.tokens,
		ErrorsByKind: map[string]int{}, ElapsedS: round3(elapsed.Seconds()), Interrupted: l.ctx.Err() != nil,
	}
	var lat, ttft []time.Duration
	for _, t := range tallies {
		lat = append(lat, t.latency...)
		ttft = append(ttft, t.ttft...)
		r.Events += t.events
		for k, n := range t.kinds {
			r.ErrorsByKind[k] += n
			r.Errors += n
		}
		for _, m := range t.samples {
			if len(r.ErrorSamples) < maxErrorSamples && !slices.Contains(r.ErrorSamples, m) {
				r.ErrorSamples = append(r.ErrorSamples, m)
			}
		}
	}
	r.OK = len(lat)
	r.Requests = r.OK + r.Errors
	r.RequestsPerS = round3(float64(r.OK) / elapsed.Seconds())
	r.EventsPerS = round3(float64(r.Events) / elapsed.Seconds())
	r.LatencyMs, r.TTFTMs = percentilesOf(lat), percentilesOf(ttft)
	return r
}

// percentilesOf sorts d and reads its percentiles the way the bench harness does (nearest rank).
func percentilesOf(d []time.Duration) percentiles {
	if len(d) == 0 {
		return percentiles{}
	}
	slices.Sort(d)
	at := func(p float64) float64 {
		return round3(float64(d[int(p*float64(len(d)-1)+0.5)]) / float64(time.Millisecond))
	}
	return percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: at(1)}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// printTable writes the report for a person to read.
func (r loadReport) printTable(w io.Writer) {
	mode := "non-stream"
	if r.Stream {
		mode = "stream"
	}
	fmt.Fprintf(w, "%s: model %s, %s, max_tokens %d, concurrency %d\n", r.URL, r.Model, mode, r.MaxTokens, r.Concurrency)
	if r.Interrupted {
		fmt.Fprintln(w, "interrupted: the figures cover the requests that ended before")
	}
	fmt.Fprintf(w, "%-20s %d in %.2fs: %d ok, %d failed\n", "requests", r.Requests, r.ElapsedS, r.OK, r.Errors)
	fmt.Fprintf(w, "%-20s %.1f requests/s, %.1f SSE events/s\n\n", "throughput", r.RequestsPerS, r.EventsPerS)
	fmt.Fprintf(w, "%-20s %10s %10s %10s %10s\n", "ms", "p50", "p90", "p99", "max")
	for _, row := range []struct {
		name string
		p    percentiles
	}{{"latency", r.LatencyMs}, {"time to first token", r.TTFTMs}} {
		fmt.Fprintf(w, "%-20s %10.2f %10.2f %10.2f %10.2f\n", row.name, row.p.P50, row.p.P90, row.p.P99, row.p.Max)
	}
	if r.Errors == 0 {
		return
	}
	fmt.Fprintln(w, "\nerrors by kind")
	for _, k := range slices.Sorted(maps.Keys(r.ErrorsByKind)) {
		label, ok := kindLabels[k]
		if !ok {
			label = strings.Replace(k, "_", " ", 1) // http_500 -> http 500
		}
		fmt.Fprintf(w, "  %-18s %d\n", label, r.ErrorsByKind[k])
	}
	for _, m := range r.ErrorSamples {
		fmt.Fprintf(w, "  e.g. %s\n", m)
	}
}
