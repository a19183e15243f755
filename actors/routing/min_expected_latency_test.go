package routing

import (
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"
)

// expectedLoads is the test's exact unfinished/effective-speed per candidate.
func expectedLoads(cands []Candidate) []*big.Rat {
	eff := ratEffSpeeds(cands)
	loads := make([]*big.Rat, len(cands))
	for i, c := range cands {
		loads[i] = new(big.Rat).Quo(big.NewRat(int64(c.Unfinished), 1), eff[i])
	}
	return loads
}

// TestMinExpectedLatencyInvariant: over 1,000 seeded random candidate sets,
// every choice has the least unfinished/effective-speed, and every candidate
// tied for the least is chosen at least once. Loads and speeds are drawn
// from small ranges so that ties and undeclared speeds are common.
func TestMinExpectedLatencyInvariant(t *testing.T) {
	gen := seeded(2024)
	s := NewMinExpectedLatency(seeded(1))
	speeds := []float64{0, 0, 0.5, 1, 2, 3, 4} // 0 = undeclared
	ties, undeclared := 0, 0
	for set := range 1_000 {
		cands := testCandidates(1 + gen.IntN(8))
		for i := range cands {
			cands[i].Unfinished = gen.IntN(4)
			cands[i].Speed = speeds[gen.IntN(len(speeds))]
			if cands[i].Speed == 0 {
				undeclared++
			}
		}
		want := argMins(expectedLoads(cands))
		if len(want) > 1 {
			ties++
		}
		requireChoosesExactly(t, s, cands, want, 400, "set %d", set)
	}
	// The generator must actually exercise what the test claims to check.
	require.Greater(t, ties, 300, "too few sets with ties")
	require.Greater(t, undeclared, 500, "too few undeclared speeds")
}

// TestMinExpectedLatencyUndeclaredCountsAsMean: with speeds 2 and 4 declared,
// an undeclared replica counts as 3, not as 1 and not as 0.
func TestMinExpectedLatencyUndeclaredCountsAsMean(t *testing.T) {
	s := NewMinExpectedLatency(seeded(1))
	cands := withSpeeds(2, 4, 0)

	// Loads 2/2, 4/4, 2/3: the undeclared one is least only if it counts
	// as more than 2.
	cands[0].Unfinished, cands[1].Unfinished, cands[2].Unfinished = 2, 4, 2
	requireChoosesExactly(t, s, cands, map[int]bool{2: true}, 1_000)

	// Loads 2/2, 4/4, 4/3: now it is never least.
	cands[2].Unfinished = 4
	requireChoosesExactly(t, s, cands, map[int]bool{0: true, 1: true}, 1_000)

	// Loads 2/2, 4/4, 3/3: a three-way tie, only if it counts as exactly 3.
	cands[2].Unfinished = 3
	requireChoosesExactly(t, s, cands, map[int]bool{0: true, 1: true, 2: true}, 1_000)
}

// TestMinExpectedLatencyTieWithInexactMean pins a tie that dividing by a
// rounded mean would split: speeds 1, 4, 5 make the mean 10/3, so 6 in flight
// on the undeclared replica and 9 on the speed-5 one are both 1.8 exactly,
// but in float64 6/(10/3) is 1.7999999999999998 and 9/5 is 1.8.
func TestMinExpectedLatencyTieWithInexactMean(t *testing.T) {
	s := NewMinExpectedLatency(seeded(1))
	cands := withSpeeds(1, 4, 5, 0)
	cands[0].Unfinished = 10 // 10
	cands[1].Unfinished = 8  // 2
	cands[2].Unfinished = 9  // 1.8
	cands[3].Unfinished = 6  // 1.8
	requireChoosesExactly(t, s, cands, map[int]bool{2: true, 3: true}, 1_000)
}

// TestMinExpectedLatencyIdleReplicasShare: idle replicas are all tied at 0
// whatever their speed, and the reservoir tie-break spreads them evenly.
// The bound is wide; the seed makes the counts fixed anyway.
func TestMinExpectedLatencyIdleReplicasShare(t *testing.T) {
	s := NewMinExpectedLatency(seeded(5))
	cands := withSpeeds(1, 2, 0, 8)
	cands[2].Unfinished = 1 // busy: never chosen
	counts := make([]int, len(cands))
	for range 9_000 {
		counts[s.Select(cands)]++
	}
	require.Zero(t, counts[2])
	for _, i := range []int{0, 1, 3} {
		require.InDelta(t, 3_000, counts[i], 300, "counts %v", counts)
	}
}
