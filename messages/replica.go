package messages

// Health is a replica's state as its health probes see it.
type Health string

// The health states. Only Healthy is routable.
const (
	HealthUnknown      Health = "unknown"      // registered (from the state file, or before it listened), not heard from yet
	HealthHealthy      Health = "healthy"      // serving
	HealthSleeping     Health = "sleeping"     // serving nothing now (LMDeploy sleep mode); kept, not routed to
	HealthInitializing Health = "initializing" // starting up; neither routed to nor counted as a failure
	HealthDown         Health = "down"         // evicted after --health-failures failures; still probed
)

// Circuit is the passive-health breaker of a replica, driven by what requests see: a refused
// connection opens it.
type Circuit string

// The breaker states.
const (
	CircuitClosed   Circuit = "closed"    // traffic flows
	CircuitOpen     Circuit = "open"      // a request's connection was refused; no traffic until the cool-down ends
	CircuitHalfOpen Circuit = "half_open" // one trial request allowed
)

// HealthReport tells the registry that a replica's health or failure count changed.
type HealthReport struct {
	URL      string
	Health   Health
	Failures int
}

// ReplicaExpired tells the registry that a replica has been down for longer than the down list keeps
// replicas, so it is removed.
type ReplicaExpired struct {
	URL string
}
