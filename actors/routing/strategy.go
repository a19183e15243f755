// Package routing holds the strategies that choose one replica among the
// routable candidates for a request (SPEC §5).
//
// Filtering happens before a strategy runs: the registry narrows the replicas
// to those of the needed role that serve the requested model and are healthy,
// and only then asks the strategy to choose. A strategy is therefore one pure
// method over a snapshot, in the manner of Caddy's Selector.
//
// Strategies run under the registry's lock, one call at a time, so they hold
// no locks of their own and use no atomics. Each keeps its own *rand.Rand instead of
// the package-level source, so tests can seed it and assert exact outcomes.
package routing

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"
)

// Candidate is what a strategy sees of one routable replica (already filtered
// by role, model, health).
type Candidate struct {
	URL        string
	Unfinished int       // requests in flight
	Speed      float64   // declared speed; 0 = not declared
	Latency    []float64 // window of the last request durations in seconds, oldest first; may be empty
}

// Strategy chooses one candidate. Select is called with len(cands) >= 1 and
// returns an index into cands. Given no candidates it returns -1.
//
// Select must not allocate and must not keep cands: the registry reuses the
// slice for the next request.
type Strategy interface {
	Name() string
	Select(cands []Candidate) int
}

// names lists the strategies New knows, in the order Names reports them.
var names = [...]string{NameRandom, NameMinExpectedLatency, NameMinObservedLatency}

// Names returns the names New accepts. The slice is the caller's to keep.
func Names() []string {
	return append([]string(nil), names[:]...)
}

// New returns the strategy called name. A nil rnd is replaced by a PCG
// seeded from the clock; pass a seeded one for reproducible choices.
func New(name string, rnd *rand.Rand) (Strategy, error) {
	switch name {
	case NameRandom:
		return NewRandom(rnd), nil
	case NameMinExpectedLatency:
		return NewMinExpectedLatency(rnd), nil
	case NameMinObservedLatency:
		return NewMinObservedLatency(rnd), nil
	}
	return nil, fmt.Errorf("routing: unknown strategy %q (valid: %s)", name, strings.Join(names[:], ", "))
}

// orDefaultRand returns rnd, or a fresh clock-seeded PCG when rnd is nil.
func orDefaultRand(rnd *rand.Rand) *rand.Rand {
	if rnd != nil {
		return rnd
	}
	now := uint64(time.Now().UnixNano())
	return rand.New(rand.NewPCG(now, now^0x9e3779b97f4a7c15))
}

// declared reports whether s is a usable declared speed. Zero means "not
// declared"; negative, NaN and infinite values are treated the same way, so a
// bad registration cannot poison the sums below.
func declared(s float64) bool {
	return s > 0 && s <= math.MaxFloat64
}

// speedFill is what fillSpeeds learns about a candidate set: the sum and
// count of the declared speeds.
//
// A candidate without a speed counts as the mean of the declared ones (1 if
// none is declared). Rather than store that mean, which is inexact as soon as
// it is not a whole number (7/3, say), weight returns every speed multiplied
// by n: a declared speed s becomes s*n and an undeclared one becomes sum. The
// ratios between candidates are unchanged, and for speeds that are whole
// numbers (or halves, ...) every weight is exact, so equal loads compare
// equal and ties really are ties.
type speedFill struct {
	sum float64
	n   float64
}

// fillSpeeds scans cands once for the declared speeds. It does not allocate
// and does not modify cands; use the result's weight method per candidate.
func fillSpeeds(cands []Candidate) speedFill {
	var f speedFill
	for i := range cands {
		if s := cands[i].Speed; declared(s) {
			f.sum += s
			f.n++
		}
	}
	return f
}

// weight is c's effective speed, scaled by the number of declared speeds
// (see speedFill). It is always > 0.
func (f speedFill) weight(c *Candidate) float64 {
	if f.n == 0 {
		return 1
	}
	if declared(c.Speed) {
		return c.Speed * f.n
	}
	return f.sum
}

// effSpeed is c's effective speed in the candidate's own units: its declared
// speed, else the mean of the declared ones, else 1. Select uses weight; this
// is for reports and tests.
func (f speedFill) effSpeed(c *Candidate) float64 {
	if f.n == 0 {
		return 1
	}
	return f.weight(c) / f.n
}
