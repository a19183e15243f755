package routing

import "math/rand/v2"

// NameRandom selects the Random strategy.
const NameRandom = "random"

var _ Strategy = (*Random)(nil)

// Random picks a candidate at random, weighted by speed: a replica declared
// twice as fast gets twice the share of requests. A replica without a
// declared speed counts as the mean of those with one (1 if none has one), so
// adding an undeclared replica neither starves it nor floods it.
//
// It ignores load entirely, which makes it the cheapest strategy and the one
// least prone to herding when the registry's view of load is stale.
type Random struct {
	rnd *rand.Rand
}

// NewRandom returns a Random strategy drawing from rnd (nil: a clock-seeded PCG).
func NewRandom(rnd *rand.Rand) *Random {
	return &Random{rnd: orDefaultRand(rnd)}
}

// Name returns NameRandom.
func (*Random) Name() string { return NameRandom }

// Select draws one candidate with probability proportional to its effective
// speed. It makes one pass to sum the weights and one to find the draw.
func (r *Random) Select(cands []Candidate) int {
	if len(cands) == 0 {
		return -1
	}
	f := fillSpeeds(cands)
	var total float64
	for i := range cands {
		total += f.weight(&cands[i])
	}
	x := r.rnd.Float64() * total
	for i := range cands {
		x -= f.weight(&cands[i])
		if x < 0 {
			return i
		}
	}
	// Rounding can leave x at a hair above zero after the last subtraction;
	// the draw then belongs to the last candidate, whose weight is > 0.
	return len(cands) - 1
}
