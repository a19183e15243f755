package routing

import (
	"math/big"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// seeded returns a deterministic source; every test that draws uses one so
// its outcome is fixed, not luck.
func seeded(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, seed+1))
}

// testCandidates returns n candidates with distinct URLs, no load, no speed
// and empty windows, for a test to set by hand.
func testCandidates(n int) []Candidate {
	cands := make([]Candidate, n)
	for i := range cands {
		cands[i].URL = "http://replica-" + strconv.Itoa(i)
	}
	return cands
}

// withSpeeds returns candidates with the given declared speeds (0 = none).
func withSpeeds(speeds ...float64) []Candidate {
	cands := testCandidates(len(speeds))
	for i, s := range speeds {
		cands[i].Speed = s
	}
	return cands
}

// ratEffSpeeds is the test's own, exact reading of SPEC §5: a candidate
// without speed counts as the mean of those with one, 1 if none has one.
// Test speeds are whole or short binary fractions, so big.Rat is exact.
func ratEffSpeeds(cands []Candidate) []*big.Rat {
	sum, n := new(big.Rat), 0
	for _, c := range cands {
		if c.Speed > 0 {
			sum.Add(sum, new(big.Rat).SetFloat64(c.Speed))
			n++
		}
	}
	fill := big.NewRat(1, 1)
	if n > 0 {
		fill = new(big.Rat).Quo(sum, big.NewRat(int64(n), 1))
	}
	eff := make([]*big.Rat, len(cands))
	for i, c := range cands {
		if c.Speed > 0 {
			eff[i] = new(big.Rat).SetFloat64(c.Speed)
		} else {
			eff[i] = fill
		}
	}
	return eff
}

// argMins returns the indices whose key is least, by exact comparison.
func argMins(keys []*big.Rat) map[int]bool {
	min := map[int]bool{}
	var best *big.Rat
	for i, k := range keys {
		switch {
		case best == nil || k.Cmp(best) < 0:
			best = k
			min = map[int]bool{i: true}
		case k.Cmp(best) == 0:
			min[i] = true
		}
	}
	return min
}

// requireChoosesExactly draws from s until every index in want has been
// chosen, failing if any draw falls outside want or if some index in want is
// still unseen after the draws. The source is seeded, so "reachable" is
// checked deterministically, not by luck.
func requireChoosesExactly(t *testing.T, s Strategy, cands []Candidate, want map[int]bool, draws int, msgAndArgs ...any) {
	t.Helper()
	seen := map[int]bool{}
	for range draws {
		got := s.Select(cands)
		require.True(t, want[got], append([]any{"chose %d, want one of %v; candidates %+v", got, want, cands}, msgAndArgs...)...)
		seen[got] = true
		if len(seen) == len(want) {
			return
		}
	}
	require.Equal(t, want, seen, append([]any{"some tied candidates were never chosen in %d draws; candidates %+v", draws, cands}, msgAndArgs...)...)
}

func TestNames(t *testing.T) {
	require.Equal(t, []string{"random", "min_expected_latency", "min_observed_latency"}, Names())

	n := Names()
	n[0] = "changed"
	require.Equal(t, NameRandom, Names()[0], "Names must return a copy")
}

func TestNew(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			s, err := New(name, seeded(1))
			require.NoError(t, err)
			require.Equal(t, name, s.Name())

			// A nil source falls back to a clock-seeded one.
			s, err = New(name, nil)
			require.NoError(t, err)
			got := s.Select(withSpeeds(1, 2, 3))
			require.GreaterOrEqual(t, got, 0)
			require.Less(t, got, 3)
		})
	}
}

func TestNewUnknownNameListsValid(t *testing.T) {
	s, err := New("round_robin", seeded(1))
	require.Nil(t, s)
	require.Error(t, err)
	require.Contains(t, err.Error(), `"round_robin"`)
	for _, name := range Names() {
		require.Contains(t, err.Error(), name)
	}

	_, err = New("", seeded(1))
	require.Error(t, err, "the default is the caller's business, not New's")
}

func TestSelectNoCandidates(t *testing.T) {
	for _, name := range Names() {
		s, err := New(name, seeded(1))
		require.NoError(t, err)
		require.Equal(t, -1, s.Select(nil), name)
		require.Equal(t, -1, s.Select([]Candidate{}), name)
	}
}

func TestSelectSingleCandidate(t *testing.T) {
	for _, name := range Names() {
		s, err := New(name, seeded(1))
		require.NoError(t, err)
		for _, c := range []Candidate{
			{},
			{Unfinished: 100, Speed: 0.5, Latency: []float64{9}},
		} {
			require.Equal(t, 0, s.Select([]Candidate{c}), name)
		}
	}
}

func TestFillSpeeds(t *testing.T) {
	cases := []struct {
		name   string
		speeds []float64
		want   []float64 // effective speeds
	}{
		{"none declared counts as 1", []float64{0, 0}, []float64{1, 1}},
		{"all declared kept", []float64{1, 3}, []float64{1, 3}},
		{"undeclared gets the mean", []float64{1, 3, 0}, []float64{1, 3, 2}},
		{"mean over declared only", []float64{0, 2, 0, 4}, []float64{3, 2, 3, 4}},
		{"negative counts as undeclared", []float64{-5, 2, 4}, []float64{3, 2, 4}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cands := withSpeeds(tc.speeds...)
			f := fillSpeeds(cands)
			for i := range cands {
				require.InDelta(t, tc.want[i], f.effSpeed(&cands[i]), 1e-12, "candidate %d", i)
				require.Greater(t, f.weight(&cands[i]), 0.0)
			}
			for i := range cands {
				require.Equal(t, tc.speeds[i], cands[i].Speed, "fillSpeeds must not modify cands")
			}
		})
	}
}

// benchCandidates is a realistic 8-replica snapshot: mixed speeds (one
// undeclared), loads and full-ish windows.
func benchCandidates() []Candidate {
	cands := testCandidates(8)
	for i := range cands {
		cands[i].Unfinished = (i * 5) % 7
		cands[i].Speed = float64(i%4) * 0.5
		window := make([]float64, 15)
		for j := range window {
			window[j] = 0.2 + float64((i+j)%5)*0.1
		}
		cands[i].Latency = window
	}
	return cands
}

var sinkIndex int

func TestSelectDoesNotAllocate(t *testing.T) {
	cands := benchCandidates()
	for _, name := range Names() {
		s, err := New(name, seeded(1))
		require.NoError(t, err)
		allocs := testing.AllocsPerRun(1000, func() { sinkIndex = s.Select(cands) })
		require.Zero(t, allocs, "%s.Select allocates", name)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		f := fillSpeeds(cands)
		sinkIndex = int(f.weight(&cands[0]))
	})
	require.Zero(t, allocs, "fillSpeeds allocates")
}

func BenchmarkSelect(b *testing.B) {
	cands := benchCandidates()
	for _, name := range Names() {
		b.Run(name, func(b *testing.B) {
			s, err := New(name, seeded(1))
			require.NoError(b, err)
			b.ReportAllocs()
			for b.Loop() {
				sinkIndex = s.Select(cands)
			}
		})
	}
}
