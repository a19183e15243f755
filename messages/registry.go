package messages

import "time"

// Registration is what a replica declared about itself: the part of the registry that is persisted
// and that a replica actor is rebuilt from after a crash.
type Registration struct {
	URL    string   `json:"url"`
	Models []string `json:"models"`
	Role   Role     `json:"role"`
	Speed  float64  `json:"speed,omitempty"` // 0 = not declared
}

// Register adds a replica or replaces the registration of one with the same URL (its counters stay).
// Health is the replica's state until its first probe: healthy when the caller just probed it.
type Register struct {
	Reg    Registration
	Health Health
	Reply  chan<- struct{} // closed or sent to once the registry has applied it; may be nil
}

// Deregister removes a replica; Reply gets whether it was registered (may be nil).
type Deregister struct {
	URL   string
	Reply chan<- bool
}

// AcquireStatus says why an acquire got no replica.
type AcquireStatus int

// The answers to an acquire.
const (
	AcquireOK         AcquireStatus = iota // a replica was chosen and counted
	UnknownModel                           // no registered replica declares the model
	NoRoutableReplica                      // the model is known but no replica of the role can take it now
)

// Lease is one request counted in flight on one replica; release it exactly once. The registry chooses
// the replica and counts the request in one step, so a burst of requests spreads out instead of
// herding onto the replica that looked idle.
type Lease struct {
	URL string
	Gen uint64 // the registration generation, so a release after remove and re-add is not miscounted
}

// Acquired is what acquiring one replica returns.
type Acquired struct {
	Lease
	Status AcquireStatus
}

// AcquiredPair is what acquiring a DistServe pair returns; Prefill is empty when no Prefill replica
// was asked for. Status names the first role that could not be served, in Missing.
type AcquiredPair struct {
	Prefill Lease
	Decode  Lease
	Status  AcquireStatus
	Missing Role
}

// StatusQuery asks for every registered replica; with IncludeDown the evicted ones too.
type StatusQuery struct {
	IncludeDown bool
	Reply       chan<- []ReplicaStatus
}

// ReplicaStatus is one replica as /nodes/status shows it.
type ReplicaStatus struct {
	Registration
	Health     Health
	Routable   bool
	Unfinished int
	Latency    []float64 // seconds, oldest first
	Failures   int       // consecutive failed health probes
	Circuit    Circuit
	DownSince  time.Time // zero unless evicted
}
