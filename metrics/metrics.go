// Package metrics holds lmproxy's Prometheus metrics: what the HTTP layer and the actors observe,
// exposed on GET /metrics. Every name starts with lmproxy_; docs/metrics.md lists them.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lmproxy/lmproxy/messages"
)

// Metrics is one proxy's set of metrics, on a registry of its own (tests run many proxies in one
// process). A nil *Metrics records nothing.
type Metrics struct {
	reg *prometheus.Registry

	requests       *prometheus.CounterVec
	duration       *prometheus.HistogramVec
	ttft           *prometheus.HistogramVec
	sseEvents      *prometheus.CounterVec
	disconnects    *prometheus.CounterVec
	upstreamErrors *prometheus.CounterVec
	routing        prometheus.Histogram
	probes         *prometheus.CounterVec
	actorEvents    *prometheus.CounterVec

	// series holds what Request resolved for each combination of labels: looking a series up by
	// its labels hashes and checks every label value, half a microsecond per request. A replica's
	// entries go with its series when it leaves (KeepReplicas).
	mu     sync.RWMutex
	series map[seriesKey]*requestSeries
	// replicas are the replicas registered at the last KeepReplicas; the registry actor's goroutine
	// alone touches it.
	replicas map[string]bool
}

// seriesKey is the labels of one request's series.
type seriesKey struct {
	route, model, replica string
	status                int
}

// requestSeries are the series one finished request is recorded in; ttft is nil without a model,
// events without a replica.
type requestSeries struct {
	count    prometheus.Counter
	duration prometheus.Observer
	ttft     prometheus.Observer
	events   prometheus.Counter
}

// latencyBuckets span a cached one-token answer to a long generation.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// New makes the metrics. replicas is called at each scrape for the per-replica gauges, so the
// request path pays nothing for them.
func New(replicas func() []messages.ReplicaStatus) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lmproxy_requests_total",
			Help: "Requests answered, by route template, model, replica and HTTP status.",
		}, []string{"route", "model", "replica", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lmproxy_request_duration_seconds",
			Help:    "Time from the request's arrival to the end of its answer, by route template and model.",
			Buckets: latencyBuckets,
		}, []string{"route", "model"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "lmproxy_time_to_first_token_seconds",
			Help:    "Time from the request's arrival to the first byte of the replica's answer body, by model.",
			Buckets: latencyBuckets,
		}, []string{"model"}),
		sseEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lmproxy_sse_events_total",
			Help: "Server-sent events (streamed tokens) passed from each replica to clients.",
		}, []string{"replica"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lmproxy_client_disconnects_total",
			Help: "Requests whose client left before the answer ended, by route template.",
		}, []string{"route"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lmproxy_upstream_errors_total",
			Help: "Requests that failed on the replica's side, by replica and kind (dial_error, upstream_error, timeout).",
		}, []string{"replica", "kind"}),
		routing: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "lmproxy_routing_decision_seconds",
			Help:    "Time to choose a replica and count the request on it (the registry round trip).",
			Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2},
		}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lmproxy_health_probes_total",
			Help: "Health probes, by replica and result (healthy, sleeping, initializing, failure).",
		}, []string{"replica", "result"}),
		actorEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lmproxy_actor_events_total",
			Help: "Actor-system events worth watching: dead_letter, restart.",
		}, []string{"event"}),
		series: map[seriesKey]*requestSeries{},
	}
	m.reg.MustRegister(m.requests, m.duration, m.ttft, m.sseEvents, m.disconnects, m.upstreamErrors,
		m.routing, m.probes, m.actorEvents, newReplicaCollector(replicas),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.actorEvents.WithLabelValues("dead_letter")
	m.actorEvents.WithLabelValues("restart")
	return m
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Request records one answered request, with the server-sent events (streamed tokens) it passed
// from its replica. model and replica are empty when none was chosen (an unknown model never
// becomes a label: clients choose it, and labels must stay bounded).
func (m *Metrics) Request(route, model, replica string, status int, elapsed, ttft time.Duration, events int, outcome messages.Outcome) {
	if m == nil {
		return
	}
	s := m.requestSeries(seriesKey{route, model, replica, status})
	s.count.Inc()
	s.duration.Observe(elapsed.Seconds())
	if ttft > 0 && s.ttft != nil {
		s.ttft.Observe(ttft.Seconds())
	}
	if events > 0 && s.events != nil {
		s.events.Add(float64(events))
	}
	switch {
	case outcome == messages.ClientGone:
		m.disconnects.WithLabelValues(route).Inc()
	case outcome.CountsAgainstReplica() && replica != "":
		m.upstreamErrors.WithLabelValues(replica, outcome.String()).Inc()
	}
}

// requestSeries returns k's series, resolving them the first time.
func (m *Metrics) requestSeries(k seriesKey) *requestSeries {
	m.mu.RLock()
	s := m.series[k]
	m.mu.RUnlock()
	if s != nil {
		return s
	}
	// Resolved under the lock KeepReplicas holds while it deletes: a series made between its
	// deletion and the cache's would be cached, and counted, but never exported again.
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.series[k]; s != nil {
		return s
	}
	s = &requestSeries{
		count:    m.requests.WithLabelValues(k.route, k.model, k.replica, strconv.Itoa(k.status)),
		duration: m.duration.WithLabelValues(k.route, k.model),
	}
	if k.model != "" {
		s.ttft = m.ttft.WithLabelValues(k.model)
	}
	if k.replica != "" {
		s.events = m.sseEvents.WithLabelValues(k.replica)
	}
	m.series[k] = s
	return s
}

// KeepReplicas drops the series of every replica that is no longer registered: regs are the
// registrations after a change. Without it a proxy whose replicas come and go (each new URL a new
// label value) would grow its scrape for its whole life. A request still running on a replica that
// left records it again; the next change drops that too.
func (m *Metrics) KeepReplicas(regs []messages.Registration) {
	if m == nil {
		return
	}
	keep := make(map[string]bool, len(regs))
	for _, r := range regs {
		keep[r.URL] = true
	}
	gone := map[string]bool{}
	for url := range m.replicas {
		if !keep[url] {
			gone[url] = true
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.series {
		if k.replica != "" && !keep[k.replica] {
			gone[k.replica] = true
			delete(m.series, k)
		}
	}
	for url := range gone {
		labels := prometheus.Labels{"replica": url}
		m.requests.DeletePartialMatch(labels)
		m.sseEvents.DeletePartialMatch(labels)
		m.upstreamErrors.DeletePartialMatch(labels)
		m.probes.DeletePartialMatch(labels)
	}
	m.replicas = keep
}

// UpstreamError counts one failed attempt on replica that Request never sees: a request retried on
// another replica is recorded by Request under the replica that answered it.
func (m *Metrics) UpstreamError(replica string, outcome messages.Outcome) {
	if m == nil || !outcome.CountsAgainstReplica() {
		return
	}
	m.upstreamErrors.WithLabelValues(replica, outcome.String()).Inc()
}

// Routing records one registry round trip.
func (m *Metrics) Routing(d time.Duration) {
	if m == nil {
		return
	}
	m.routing.Observe(d.Seconds())
}

// Probe records one health probe's result.
func (m *Metrics) Probe(replica string, result string) {
	if m == nil {
		return
	}
	m.probes.WithLabelValues(replica, result).Inc()
}

// ActorEvent counts one dead letter or actor restart.
func (m *Metrics) ActorEvent(event string) {
	if m == nil {
		return
	}
	m.actorEvents.WithLabelValues(event).Inc()
}
