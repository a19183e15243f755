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

// Acquire asks for a replica of Role serving Model, and counts one request in flight on it in the same
// step, so a burst of requests spreads out instead of herding onto the replica that looked idle.
type Acquire struct {
	Model string
	Role  Role
	Not   string // a URL to leave out (the replica a retried request just failed on)
	Reply chan<- Acquired
}

// AcquirePair asks for a Prefill and a Decode replica of Model in one step (DistServe). With NoPrefill
// only the Decode replica is chosen.
type AcquirePair struct {
	Model     string
	NoPrefill bool
	Reply     chan<- AcquiredPair
}

// AcquireStatus says why an Acquire got no replica.
type AcquireStatus int

// The answers to an Acquire.
const (
	AcquireOK         AcquireStatus = iota // a replica was chosen and counted
	UnknownModel                           // no registered replica declares the model
	NoRoutableReplica                      // the model is known but no replica of the role can take it now
)

// Lease is one request counted in flight on one replica; Release it exactly once.
type Lease struct {
	URL string
	Gen uint64 // the registration generation, so a release after remove and re-add is not miscounted
}

// Acquired answers Acquire.
type Acquired struct {
	Lease
	Status AcquireStatus
}

// AcquiredPair answers AcquirePair; Prefill is empty under NoPrefill. Status names the first role that
// could not be served, in Missing.
type AcquiredPair struct {
	Prefill Lease
	Decode  Lease
	Status  AcquireStatus
	Missing Role
}

// Release ends one request counted by Acquire: it always follows, on every path.
type Release struct {
	Lease
	Outcome Outcome
	Elapsed time.Duration // dispatch to end of response
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
