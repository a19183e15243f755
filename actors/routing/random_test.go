package routing

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRandomExactCounts pins the exact counts over 10,000 draws with a fixed
// seed (so any change in how Random draws shows up), and checks that every
// count agrees with its candidate's effective speed within a wide bound
// (so the pinned numbers are known to be right, not just stable).
func TestRandomExactCounts(t *testing.T) {
	const draws = 10_000
	cases := []struct {
		name   string
		speeds []float64
		share  []float64 // expected share of each candidate
		want   []int     // exact counts with seeded(42)
	}{
		{
			name:   "none declared is uniform",
			speeds: []float64{0, 0, 0, 0},
			share:  []float64{0.25, 0.25, 0.25, 0.25},
			want:   []int{2531, 2483, 2535, 2451},
		},
		{
			name:   "one to three",
			speeds: []float64{1, 3},
			share:  []float64{0.25, 0.75},
			want:   []int{2531, 7469},
		},
		{
			name:   "undeclared gets the mean",
			speeds: []float64{1, 3, 0}, // the third counts as 2
			share:  []float64{1.0 / 6, 3.0 / 6, 2.0 / 6},
			want:   []int{1706, 5017, 3277},
		},
		{
			name:   "inexact mean",
			speeds: []float64{1, 2, 4, 0}, // the fourth counts as 7/3
			share:  []float64{3.0 / 28, 6.0 / 28, 12.0 / 28, 7.0 / 28},
			want:   []int{1077, 2137, 4335, 2451},
		},
		{
			name:   "fractional speeds",
			speeds: []float64{0.5, 1.5},
			share:  []float64{0.25, 0.75},
			want:   []int{2531, 7469},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewRandom(seeded(42))
			cands := withSpeeds(tc.speeds...)
			got := make([]int, len(cands))
			for range draws {
				got[s.Select(cands)]++
			}
			t.Logf("counts %v", got)
			for i, n := range got {
				require.InDelta(t, tc.share[i], float64(n)/draws, 0.05,
					"candidate %d (speed %v) got %d of %d draws", i, tc.speeds[i], n, draws)
			}
			require.Equal(t, tc.want, got, "exact counts with seeded(42)")
		})
	}
}

// TestRandomOneToThreeBound is the SPEC example spelled out: speeds 1 and 3
// give the second replica between 70% and 80% of 10,000 seeded draws.
func TestRandomOneToThreeBound(t *testing.T) {
	s := NewRandom(seeded(7))
	cands := withSpeeds(1, 3)
	second := 0
	for range 10_000 {
		if s.Select(cands) == 1 {
			second++
		}
	}
	require.GreaterOrEqual(t, second, 7_000)
	require.LessOrEqual(t, second, 8_000)
}

// TestRandomSameSeedSameChoices: Random's only source of randomness is its
// rnd, so two strategies seeded alike choose alike.
func TestRandomSameSeedSameChoices(t *testing.T) {
	a, b := NewRandom(seeded(3)), NewRandom(seeded(3))
	cands := withSpeeds(1, 0, 2, 5, 0.5)
	for i := range 1_000 {
		require.Equal(t, a.Select(cands), b.Select(cands), "draw %d", i)
	}
}

// TestRandomIgnoresLoad: Random weighs by speed only; in-flight counts and
// latency windows do not move its choice.
func TestRandomIgnoresLoad(t *testing.T) {
	plain := withSpeeds(1, 2, 0)
	loaded := withSpeeds(1, 2, 0)
	loaded[0].Unfinished, loaded[0].Latency = 50, []float64{30}
	a, b := NewRandom(seeded(9)), NewRandom(seeded(9))
	for i := range 1_000 {
		require.Equal(t, a.Select(plain), b.Select(loaded), "draw %d", i)
	}
}
