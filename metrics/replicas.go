package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lmproxy/lmproxy/messages"
)

var (
	inFlightDesc = prometheus.NewDesc("lmproxy_replica_in_flight",
		"Requests in flight on each replica.", []string{"replica"}, nil)
	healthDesc = prometheus.NewDesc("lmproxy_replica_health",
		"1 for each replica's current health state (healthy, sleeping, initializing, unknown, down).", []string{"replica", "health"}, nil)
	circuitDesc = prometheus.NewDesc("lmproxy_replica_circuit",
		"1 for each replica's current passive-health circuit state (closed, open, half_open).", []string{"replica", "state"}, nil)
	routableDesc = prometheus.NewDesc("lmproxy_replica_routable",
		"1 when the replica takes new requests now.", []string{"replica"}, nil)
)

// replicaCollector reads the registry at scrape time, so per-replica gauges cost the request path
// nothing and a removed replica disappears from the output.
type replicaCollector struct {
	replicas func() []messages.ReplicaStatus
}

func newReplicaCollector(replicas func() []messages.ReplicaStatus) prometheus.Collector {
	return replicaCollector{replicas: replicas}
}

func (c replicaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- inFlightDesc
	ch <- healthDesc
	ch <- circuitDesc
	ch <- routableDesc
}

func (c replicaCollector) Collect(ch chan<- prometheus.Metric) {
	if c.replicas == nil {
		return
	}
	for _, r := range c.replicas() {
		ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(r.Unfinished), r.URL)
		ch <- prometheus.MustNewConstMetric(healthDesc, prometheus.GaugeValue, 1, r.URL, string(r.Health))
		ch <- prometheus.MustNewConstMetric(circuitDesc, prometheus.GaugeValue, 1, r.URL, string(r.Circuit))
		routable := 0.0
		if r.Routable {
			routable = 1
		}
		ch <- prometheus.MustNewConstMetric(routableDesc, prometheus.GaugeValue, routable, r.URL)
	}
}
