package routing

import (
	"math"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"
)

// observedWant is the test's exact reading of SPEC §5 for
// min_observed_latency: the candidates with an empty window if any, else
// those with the least mean.
func observedWant(cands []Candidate) map[int]bool {
	empty := map[int]bool{}
	for i, c := range cands {
		if len(c.Latency) == 0 {
			empty[i] = true
		}
	}
	if len(empty) > 0 {
		return empty
	}
	means := make([]*big.Rat, len(cands))
	for i, c := range cands {
		sum := new(big.Rat)
		for _, x := range c.Latency {
			sum.Add(sum, new(big.Rat).SetFloat64(x))
		}
		means[i] = sum.Quo(sum, big.NewRat(int64(len(c.Latency)), 1))
	}
	return argMins(means)
}

// TestMinObservedLatencyInvariant: over 1,000 seeded random candidate sets,
// a candidate with an empty window is always chosen when there is one,
// otherwise one with the least mean; and every candidate tied for the choice
// is chosen at least once. Half the sets have no empty window so the mean
// rule is exercised as often as the empty one.
func TestMinObservedLatencyInvariant(t *testing.T) {
	gen := seeded(77)
	s := NewMinObservedLatency(seeded(1))
	values := []float64{0.25, 0.5, 1, 1.5, 2}
	withEmpty, ties := 0, 0
	for set := range 1_000 {
		allowEmpty := set%2 == 0
		cands := testCandidates(1 + gen.IntN(8))
		for i := range cands {
			n := 1 + gen.IntN(4)
			if allowEmpty {
				n = gen.IntN(4)
			}
			cands[i].Latency = make([]float64, n)
			for j := range cands[i].Latency {
				cands[i].Latency[j] = values[gen.IntN(len(values))]
			}
			// Load must not matter to this strategy.
			cands[i].Unfinished = gen.IntN(10)
		}
		want := observedWant(cands)
		if len(cands[firstKey(want)].Latency) == 0 {
			withEmpty++
		}
		if len(want) > 1 {
			ties++
		}
		requireChoosesExactly(t, s, cands, want, 400, "set %d", set)
	}
	require.Greater(t, withEmpty, 300, "too few sets with an empty window")
	require.Greater(t, ties, 200, "too few sets with ties")
}

func firstKey(m map[int]bool) int {
	for k := range m {
		return k
	}
	return -1
}

// TestMinObservedLatencyEmptyWindowFirst is the LMDeploy bug this strategy
// fixes: a newly added replica (empty window) is chosen over replicas that
// are fast, not starved as if it were infinitely slow.
func TestMinObservedLatencyEmptyWindowFirst(t *testing.T) {
	s := NewMinObservedLatency(seeded(1))
	cands := testCandidates(4)
	cands[0].Latency = []float64{0.001}
	cands[1].Latency = []float64{0, 0, 0}
	cands[2].Unfinished = 100 // new and already busy: still first
	cands[3].Latency = []float64{5, 0.001}
	requireChoosesExactly(t, s, cands, map[int]bool{2: true}, 1_000)

	// Two new replicas share the traffic.
	cands[0].Latency = nil
	requireChoosesExactly(t, s, cands, map[int]bool{0: true, 2: true}, 1_000)
}

// TestMinObservedLatencyMean: the mean of the whole window decides, not its
// last or its best entry.
func TestMinObservedLatencyMean(t *testing.T) {
	s := NewMinObservedLatency(seeded(1))
	cands := testCandidates(3)
	cands[0].Latency = []float64{0.1, 3.0}      // best single entry, mean 1.55
	cands[1].Latency = []float64{1.0, 1.0, 1.2} // mean 1.0666…
	cands[2].Latency = []float64{1.5, 1.5, 0.1} // latest entry best, mean 1.0333…
	requireChoosesExactly(t, s, cands, map[int]bool{2: true}, 1_000)

	// Equal means over windows of different lengths are a tie.
	cands[1].Latency = []float64{1.5, 0.5}
	cands[2].Latency = []float64{1}
	requireChoosesExactly(t, s, cands, map[int]bool{1: true, 2: true}, 1_000)
}

// TestMinObservedLatencyNaN: a corrupt (NaN) window never wins over a real
// one, and a set of only corrupt windows still yields a valid index.
func TestMinObservedLatencyNaN(t *testing.T) {
	s := NewMinObservedLatency(seeded(1))
	cands := testCandidates(3)
	cands[0].Latency = []float64{math.NaN()}
	cands[1].Latency = []float64{2}
	cands[2].Latency = []float64{math.NaN(), 1}
	requireChoosesExactly(t, s, cands, map[int]bool{1: true}, 1_000)

	cands[1].Latency = []float64{math.NaN()}
	requireChoosesExactly(t, s, cands, map[int]bool{0: true, 1: true, 2: true}, 1_000)
}
