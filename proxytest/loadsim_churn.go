package proxytest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/lmproxy/lmproxy/messages"
)

// ChurnCounts is how many membership changes a simulation made while under load.
type ChurnCounts struct {
	Added      int // new replicas, and removed ones registered again (a new generation)
	Evicted    int // replicas whose probe was made to fail
	Readmitted int // evicted replicas made healthy again once the registry had them down
	Replaced   int // registrations replaced in place (upsert), with other models and speed
	Removed    int
}

// churner changes the replica set during a simulation, one change every step cycles, and keeps what
// the registry should hold at the end.
type churner struct {
	s       *loadSim
	rng     *rand.Rand
	live    []int                            // numbers of the registered replicas
	regs    map[string]messages.Registration // what each registered replica declared last
	failing []string                         // replicas whose probe fails, oldest first
	removed []int                            // numbers of removed replicas, to register again
	next    int                              // the number of the next new replica
	version int
	counts  ChurnCounts
}

func newChurner(s *loadSim, rng *rand.Rand) *churner {
	ch := &churner{s: s, rng: rng, regs: map[string]messages.Registration{}, next: s.cfg.Replicas}
	for i := range s.cfg.Replicas {
		ch.live = append(ch.live, i)
		ch.regs[simURL(i)] = simRegistration(i, 0)
	}
	return ch
}

// run makes cfg.ChurnOps changes, each once the workers have done another step cycles; it stops
// early when the workers are done.
func (ch *churner) run(ctx context.Context) {
	s := ch.s
	for op := range s.cfg.ChurnOps {
		for s.cycles.Load() < int64(op+1)*s.step {
			select {
			case <-s.progress:
			case <-s.workersDone:
				return
			case <-ctx.Done():
				return
			}
		}
		ch.change(ctx, op)
	}
}

// change makes one change; the kinds take turns so that every kind happens through the run.
func (ch *churner) change(ctx context.Context, op int) {
	switch op % 5 {
	case 0:
		ch.add(ctx)
	case 1:
		ch.evict()
	case 2:
		ch.replace(ctx)
	case 3:
		ch.readmit(ctx)
	case 4:
		ch.remove(ctx)
	}
}

func (ch *churner) add(ctx context.Context) {
	i := ch.next
	if len(ch.removed) > 0 {
		i, ch.removed = ch.removed[0], ch.removed[1:]
	} else {
		ch.next++
	}
	reg := simRegistration(i, ch.version)
	ch.s.c.probe.set(reg.URL, false)
	if err := ch.s.c.reg.Register(ctx, reg, messages.HealthHealthy); err != nil {
		ch.s.fail(fmt.Errorf("register %s: %w", reg.URL, err))
		return
	}
	ch.live = append(ch.live, i)
	ch.regs[reg.URL] = reg
	ch.counts.Added++
}

// evict makes a random healthy replica's probe fail, keeping at least four in five replicas healthy.
func (ch *churner) evict() {
	if len(ch.failing) >= len(ch.live)/5 {
		return
	}
	url := simURL(ch.live[ch.rng.IntN(len(ch.live))])
	if slices.Contains(ch.failing, url) {
		return
	}
	ch.s.c.probe.set(url, true)
	ch.failing = append(ch.failing, url)
	ch.counts.Evicted++
}

// replace registers a random replica again with other models and speed; its counters must stay.
func (ch *churner) replace(ctx context.Context) {
	ch.version++
	reg := simRegistration(ch.live[ch.rng.IntN(len(ch.live))], ch.version)
	if err := ch.s.c.reg.Register(ctx, reg, messages.HealthHealthy); err != nil {
		ch.s.fail(fmt.Errorf("replace %s: %w", reg.URL, err))
		return
	}
	ch.regs[reg.URL] = reg
	ch.counts.Replaced++
}

// readmit waits until the registry has the longest-failing replica down, then makes it healthy.
func (ch *churner) readmit(ctx context.Context) {
	if len(ch.failing) == 0 {
		return
	}
	url := ch.failing[0]
	err := poll(ctx, ch.s.cfg.SettleTimeout, func() error {
		st, err := ch.s.c.reg.Status(ctx, true)
		if err != nil {
			return err
		}
		for _, rs := range st {
			if rs.URL == url && rs.Health == messages.HealthDown {
				return nil
			}
		}
		return fmt.Errorf("replica %s with a failing probe is not evicted", url)
	})
	if err != nil {
		ch.s.fail(err)
		return
	}
	ch.s.c.probe.set(url, false)
	ch.failing = ch.failing[1:]
	ch.counts.Readmitted++
}

// remove deregisters a random replica, keeping at least half as many as at the start.
func (ch *churner) remove(ctx context.Context) {
	if len(ch.live) <= ch.s.cfg.Replicas/2 {
		return
	}
	k := ch.rng.IntN(len(ch.live))
	i := ch.live[k]
	url := simURL(i)
	ok, err := ch.s.c.reg.Deregister(ctx, url)
	if err != nil || !ok {
		ch.s.fail(fmt.Errorf("deregister %s: registered=%v, %v", url, ok, err))
		return
	}
	ch.live = slices.Delete(ch.live, k, k+1)
	delete(ch.regs, url)
	ch.failing = slices.DeleteFunc(ch.failing, func(u string) bool { return u == url })
	ch.removed = append(ch.removed, i)
	ch.counts.Removed++
}

// poll calls check until it returns nil, giving up with its last error after limit.
func poll(ctx context.Context, limit time.Duration, check func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := check()
		if err == nil || ctx.Err() != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", limit, err)
		}
		time.Sleep(time.Millisecond)
	}
}
