package proxytest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lmproxy/lmproxy/messages"
)

// LoadSimConfig configures RunLoadSim. Zero fields get the defaults in brackets.
type LoadSimConfig struct {
	Replicas       int           // replicas registered at the start [100]
	Cycles         int           // acquire/release cycles that got a replica, in all [100,000]
	Workers        int           // concurrent clients [32]
	MaxService     time.Duration // a lease is held a random 0..MaxService [200µs]
	HealthInterval time.Duration // between two probes of one replica [20ms]
	ChurnOps       int           // membership changes, spread evenly over the run [200]
	Seed           uint64        // seeds every random choice (not the interleaving) [1]
	SettleTimeout  time.Duration // how long the end checks wait for the registry to settle [10s]
}

func (c LoadSimConfig) withDefaults() LoadSimConfig {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Replicas, 100)
	def(&c.Cycles, 100_000)
	def(&c.Workers, 32)
	def(&c.ChurnOps, 200)
	if c.MaxService <= 0 {
		c.MaxService = 200 * time.Microsecond
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = 20 * time.Millisecond
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.SettleTimeout <= 0 {
		c.SettleTimeout = 10 * time.Second
	}
	return c
}

// LoadSimResult is what a simulation did.
type LoadSimResult struct {
	Acquires   int64                      // Acquire and AcquirePair calls
	Cycles     int64                      // acquires that got a replica (a pair counts once)
	Leases     int64                      // leases handed out (a pair is two)
	Releases   int64                      // Release calls
	NoReplica  int64                      // acquires answered with an unknown model or no routable replica
	Outcomes   map[messages.Outcome]int64 // releases by outcome
	Churn      ChurnCounts
	Replicas   int // registered at the end, down ones included
	Elapsed    time.Duration
	AcquireP99 time.Duration // of one Acquire call, sampled
}

// simModels are the models the simulated replicas serve.
var simModels = []string{"model-a", "model-b", "model-c", "model-d", "model-e"}

// simOutcomes are the ways a simulated request ends, most of them well; simWeights are their odds in
// a hundred.
var (
	simOutcomes = [...]messages.Outcome{
		messages.OK, messages.Rejected, messages.ClientGone, messages.UpstreamError, messages.Timeout, messages.DialError,
	}
	simWeights = [len(simOutcomes)]int{85, 5, 4, 3, 2, 1}
)

// RunLoadSim drives a real registry actor and its replica actors as the HTTP layer would, without
// HTTP: workers acquire replicas, hold them a random service time and release them with a random
// outcome, while replicas are added, evicted, re-admitted, replaced and removed. Then it checks the
// registry's invariants — every acquire answered, every lease released and uncounted, the replica
// list exactly what was registered, health as the probes say, no miscount logged — and returns an
// error naming each one that failed. ctx bounds the run: give it a deadline.
func RunLoadSim(ctx context.Context, cfg LoadSimConfig) (LoadSimResult, error) {
	cfg = cfg.withDefaults()
	c, err := startSimCluster(cfg.HealthInterval, cfg.Replicas)
	if err != nil {
		return LoadSimResult{}, err
	}
	defer c.stop()

	s := &loadSim{
		cfg: cfg, c: c, step: int64(max(1, cfg.Cycles/(cfg.ChurnOps+1))),
		progress: make(chan struct{}, 1), workersDone: make(chan struct{}),
	}
	start := time.Now()
	churn := newChurner(s, rand.New(rand.NewPCG(cfg.Seed, 0)))
	churnDone := make(chan struct{})
	go func() {
		defer close(churnDone)
		churn.run(ctx)
	}()
	var wg sync.WaitGroup
	lat := make([][]time.Duration, cfg.Workers)
	for w := range cfg.Workers {
		wg.Go(func() { lat[w] = s.work(ctx, rand.New(rand.NewPCG(cfg.Seed, uint64(w)+1))) })
	}
	wg.Wait()
	close(s.workersDone)
	<-churnDone

	res := s.result(time.Since(start), churn, lat)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, errors.Join(append(s.failures(), s.verify(ctx, churn)...)...)
}

// loadSim is one simulation's shared state; the counters are written by the workers.
type loadSim struct {
	cfg                                LoadSimConfig
	c                                  *simCluster
	acquires, cycles, leases, releases atomic.Int64
	claimed, noReplica                 atomic.Int64
	outcomes                           [len(simOutcomes)]atomic.Int64
	errMu                              sync.Mutex
	errs                               []error
	step                               int64         // the churn makes one change every step cycles
	progress                           chan struct{} // poked every step cycles, to wake the churn
	workersDone                        chan struct{}
}

// fail records a broken invariant seen during the run.
func (s *loadSim) fail(err error) {
	s.errMu.Lock()
	if len(s.errs) < 10 { // the first few say enough
		s.errs = append(s.errs, err)
	}
	s.errMu.Unlock()
}

func (s *loadSim) failures() []error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return append([]error(nil), s.errs...)
}

// work runs cycles while the run needs more; it returns a sample of its Acquire calls' durations.
func (s *loadSim) work(ctx context.Context, rng *rand.Rand) []time.Duration {
	var sample []time.Duration
	// A cycle is claimed before it starts, so that the workers do exactly cfg.Cycles in all.
	for ctx.Err() == nil && s.claimed.Add(1) <= int64(s.cfg.Cycles) {
		leases, err := s.lease(ctx, rng, &sample)
		if err != nil {
			if ctx.Err() == nil {
				s.fail(fmt.Errorf("acquire not answered: %w", err))
			}
			return sample
		}
		service := time.Duration(rng.Int64N(int64(s.cfg.MaxService) + 1))
		time.Sleep(service) // the request being served
		o := pickOutcome(rng)
		for _, l := range leases {
			s.c.reg.Release(l, simOutcomes[o], service)
			s.releases.Add(1)
			s.outcomes[o].Add(1)
		}
		if n := s.cycles.Add(1); n%s.step == 0 {
			select {
			case s.progress <- struct{}{}:
			default: // the churner has a wake-up pending already
			}
		}
	}
	return sample
}

// lease acquires, with a new random request each time, until a replica can serve; it samples one
// call in 64.
func (s *loadSim) lease(ctx context.Context, rng *rand.Rand, sample *[]time.Duration) ([]messages.Lease, error) {
	for {
		t0 := time.Now()
		leases, err := s.acquire(ctx, rng)
		if rng.IntN(64) == 0 {
			*sample = append(*sample, time.Since(t0))
		}
		if err != nil || len(leases) > 0 {
			return leases, err
		}
		s.noReplica.Add(1)
	}
}

// acquire asks for a Hybrid, Prefill or Decode replica, or a DistServe pair, of a random model, the
// way the HTTP layer does; it returns the leases to release (none when no replica could serve).
func (s *loadSim) acquire(ctx context.Context, rng *rand.Rand) ([]messages.Lease, error) {
	model := simModels[rng.IntN(len(simModels))]
	s.acquires.Add(1)
	switch k := rng.IntN(10); {
	case k == 0: // DistServe, sometimes with a dummy prefill
		p, err := s.c.reg.AcquirePair(ctx, model, rng.IntN(4) == 0)
		if err != nil || p.Status != messages.AcquireOK {
			return nil, err
		}
		leases := []messages.Lease{p.Decode}
		if p.Prefill.URL != "" {
			leases = append(leases, p.Prefill)
		}
		s.leases.Add(int64(len(leases)))
		return leases, nil
	default:
		role := messages.Hybrid
		if k == 1 {
			role = messages.Prefill
		} else if k == 2 {
			role = messages.Decode
		}
		not := ""
		if rng.IntN(20) == 0 { // a retry that leaves out the replica it just failed on
			not = simURL(rng.IntN(s.cfg.Replicas))
		}
		a, err := s.c.reg.Acquire(ctx, model, role, not)
		if err != nil || a.Status != messages.AcquireOK {
			return nil, err
		}
		if a.URL == not {
			s.fail(fmt.Errorf("acquire leaving out %s chose it", not))
		}
		s.leases.Add(1)
		return []messages.Lease{a.Lease}, nil
	}
}

// pickOutcome draws an index of simOutcomes by weight.
func pickOutcome(rng *rand.Rand) int {
	n := rng.IntN(100)
	for i, w := range simWeights {
		if n -= w; n < 0 {
			return i
		}
	}
	return 0
}
