package routing

import "math/rand/v2"

// NameMinExpectedLatency selects the MinExpectedLatency strategy.
const NameMinExpectedLatency = "min_expected_latency"

var _ Strategy = (*MinExpectedLatency)(nil)

// MinExpectedLatency picks the candidate with the least unfinished/speed:
// the one expected to get through its queue soonest. Speed is filled as in
// Random (undeclared counts as the mean of the declared, 1 if none).
//
// Ties are broken at random so that equally loaded replicas (typically all
// idle ones) share the traffic instead of the first in the list taking it
// all. The tie-break is a reservoir draw in the same single pass: no sorting,
// no allocation.
type MinExpectedLatency struct {
	rnd *rand.Rand
}

// NewMinExpectedLatency returns the strategy drawing ties from rnd (nil: a
// clock-seeded PCG).
func NewMinExpectedLatency(rnd *rand.Rand) *MinExpectedLatency {
	return &MinExpectedLatency{rnd: orDefaultRand(rnd)}
}

// Name returns NameMinExpectedLatency.
func (*MinExpectedLatency) Name() string { return NameMinExpectedLatency }

// Select returns the index of a candidate with the least unfinished/speed.
//
// Loads are compared by cross-multiplication, u_i*w_best against
// u_best*w_i, rather than by dividing: with the scaled weights of speedFill
// this is exact for ordinary speeds, so two replicas whose loads are equal
// as fractions are seen as tied rather than split by a rounding error.
func (s *MinExpectedLatency) Select(cands []Candidate) int {
	if len(cands) == 0 {
		return -1
	}
	f := fillSpeeds(cands)
	best := 0
	bu := float64(cands[0].Unfinished)
	bw := f.weight(&cands[0])
	count := 1
	for i := 1; i < len(cands); i++ {
		u := float64(cands[i].Unfinished)
		w := f.weight(&cands[i])
		// u/w versus bu/bw, with w and bw > 0.
		lhs, rhs := u*bw, bu*w
		switch {
		case lhs < rhs:
			best, bu, bw, count = i, u, w, 1
		case lhs == rhs:
			count++
			if s.rnd.IntN(count) == 0 {
				best, bu, bw = i, u, w
			}
		}
	}
	return best
}
