package messages

import (
	"fmt"
	"strings"
)

// Pair names one DistServe link: KV caches migrate from the Prefill replica to the Decode replica.
type Pair struct {
	Prefill string
	Decode  string
}

// String shows a pair as logs and error messages name it.
func (p Pair) String() string { return p.Prefill + " → " + p.Decode }

// MigrationProtocol is how a Decode replica pulls the KV cache: LMDeploy's enum, numbered as it
// travels on the wire (enum.auto() starts at 1).
type MigrationProtocol int

// The migration protocols.
const (
	TCP    MigrationProtocol = 1
	RDMA   MigrationProtocol = 2
	NVLINK MigrationProtocol = 3
)

// ParseMigrationProtocol accepts TCP, RDMA or NVLINK, in any case.
func ParseMigrationProtocol(s string) (MigrationProtocol, error) {
	for _, p := range []MigrationProtocol{TCP, RDMA, NVLINK} {
		if strings.EqualFold(strings.TrimSpace(s), p.String()) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown migration protocol %q (want TCP, RDMA or NVLINK)", s)
}

// String returns the protocol's LMDeploy name.
func (p MigrationProtocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case RDMA:
		return "RDMA"
	case NVLINK:
		return "NVLINK"
	}
	return fmt.Sprintf("MigrationProtocol(%d)", int(p))
}

// RDMALinkType is the RDMA fabric: LMDeploy's enum, numbered as it travels on the wire.
type RDMALinkType int

// The RDMA link types.
const (
	IB   RDMALinkType = 1
	RoCE RDMALinkType = 2
)

// ParseRDMALinkType accepts RoCE or IB, in any case.
func ParseRDMALinkType(s string) (RDMALinkType, error) {
	for _, t := range []RDMALinkType{IB, RoCE} {
		if strings.EqualFold(strings.TrimSpace(s), t.String()) {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown RDMA link type %q (want RoCE or IB)", s)
}

// String returns the link type's LMDeploy name.
func (t RDMALinkType) String() string {
	switch t {
	case IB:
		return "IB"
	case RoCE:
		return "RoCE"
	}
	return fmt.Sprintf("RDMALinkType(%d)", int(t))
}

// EnsureLink asks for Pair's link to be connected; Reply gets nil once it is, or why it could not be.
type EnsureLink struct {
	Pair  Pair
	Reply chan<- error // buffered: the link never waits on its asker
}

// Shelve records a prefill session whose KV cache waits on Pair's Prefill replica for its decode.
type Shelve struct {
	Pair    Pair
	Session int64
}

// Reshelve moves a shelved session to another pair of its Prefill replica: its decode goes to another
// Decode replica, the first one having refused the connection before it pulled anything.
type Reshelve struct {
	From    Pair
	To      Pair
	Session int64
}

// Unshelve says how the decode answer of a shelved session ended (Unused: it was never sent).
type Unshelve struct {
	Pair    Pair
	Session int64
	Outcome Outcome
}

// ReplicaLeft says a replica was removed, evicted or re-registered: its links are dropped.
type ReplicaLeft struct {
	URL string
}

// CollectGarbage frees the sessions shelved for Decode replicas that left; Reply gets the result.
type CollectGarbage struct {
	Reply chan<- GarbageCollected // buffered
}

// GarbageCollected answers CollectGarbage: how many caches were freed, and the frees that failed.
type GarbageCollected struct {
	Freed  int
	Failed []string
}
