package routing

import (
	"math"
	"math/rand/v2"
)

// NameMinObservedLatency selects the MinObservedLatency strategy.
const NameMinObservedLatency = "min_observed_latency"

var _ Strategy = (*MinObservedLatency)(nil)

// MinObservedLatency picks the candidate whose recent requests finished
// fastest on average: the least mean of its latency window.
//
// A candidate with an empty window is chosen first. LMDeploy's proxy treats
// an empty window as infinitely slow, so a replica added to a busy cluster
// never gets a request and never fills its window; here it gets traffic at
// once, and the first completed request gives it a real mean. Ties, among
// empty windows as among equal means, are broken at random by a reservoir
// draw in the same pass.
type MinObservedLatency struct {
	rnd *rand.Rand
}

// NewMinObservedLatency returns the strategy drawing ties from rnd (nil: a
// clock-seeded PCG).
func NewMinObservedLatency(rnd *rand.Rand) *MinObservedLatency {
	return &MinObservedLatency{rnd: orDefaultRand(rnd)}
}

// Name returns NameMinObservedLatency.
func (*MinObservedLatency) Name() string { return NameMinObservedLatency }

// Select returns the index of a candidate with an empty latency window if
// there is one, else of one with the least mean latency.
func (s *MinObservedLatency) Select(cands []Candidate) int {
	if len(cands) == 0 {
		return -1
	}
	// Reservoir tie-break: the k-th candidate tied for the least mean
	// replaces the choice with probability 1/k, so each of the tied ends up
	// chosen with equal probability. best starts at +Inf and idx at -1 so a
	// NaN mean (a corrupt window) is never chosen over a real one.
	best, idx, count := math.Inf(1), -1, 0
	for i := range cands {
		mean := meanLatency(cands[i].Latency)
		switch {
		case mean < best:
			best, idx, count = mean, i, 1
		case mean == best:
			count++
			if s.rnd.IntN(count) == 0 {
				idx = i
			}
		}
	}
	if idx < 0 { // every mean was NaN
		return s.rnd.IntN(len(cands))
	}
	return idx
}

// meanLatency is the mean of w, or -Inf for an empty window so that it sorts
// before every real mean.
func meanLatency(w []float64) float64 {
	if len(w) == 0 {
		return math.Inf(-1)
	}
	var sum float64
	for _, x := range w {
		sum += x
	}
	return sum / float64(len(w))
}
