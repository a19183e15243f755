package proxytest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/lmproxy/lmproxy/messages"
)

// verify checks the registry once the load has stopped: every lease released, no miscount logged, and,
// once the last releases and probes have been applied, the replica list exactly what the churn left
// registered, each with nothing in flight and the health its probe dictates.
func (s *loadSim) verify(ctx context.Context, ch *churner) []error {
	var errs []error
	if l, r := s.leases.Load(), s.releases.Load(); l != r {
		errs = append(errs, fmt.Errorf("%d leases handed out, %d released", l, r))
	}
	if n := s.c.errs.n.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("the registry logged %d errors, the first: %s", n, *s.c.errs.first.Load()))
	}
	err := poll(ctx, s.cfg.SettleTimeout, func() error {
		st, err := s.c.reg.Status(ctx, true)
		if err != nil {
			return err
		}
		return checkStatus(st, ch.regs, ch.failing)
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("registry did not settle: %w", err))
	}
	return errs
}

// checkStatus compares the registry's replica list with what should be registered.
func checkStatus(st []messages.ReplicaStatus, want map[string]messages.Registration, failing []string) error {
	var problems []string
	listed := map[string]bool{}
	for _, rs := range st {
		reg, registered := want[rs.URL]
		switch {
		case listed[rs.URL]:
			problems = append(problems, rs.URL+" listed twice")
		case !registered:
			problems = append(problems, rs.URL+" listed after its removal")
		case !sameRegistration(rs.Registration, reg):
			problems = append(problems, fmt.Sprintf("%s declares %+v, want %+v", rs.URL, rs.Registration, reg))
		}
		listed[rs.URL] = true
		if rs.Unfinished != 0 {
			problems = append(problems, fmt.Sprintf("%s has %d in flight with every lease released", rs.URL, rs.Unfinished))
		}
		health := messages.HealthHealthy
		if slices.Contains(failing, rs.URL) {
			health = messages.HealthDown
		}
		if rs.Health != health {
			problems = append(problems, fmt.Sprintf("%s is %s, its probe says %s", rs.URL, rs.Health, health))
		}
	}
	for url := range want {
		if !listed[url] {
			problems = append(problems, url+" registered but not listed")
		}
	}
	if len(problems) == 0 {
		return nil
	}
	slices.Sort(problems)
	return fmt.Errorf("%d problems: %s", len(problems), strings.Join(problems[:min(5, len(problems))], "; "))
}

func sameRegistration(a, b messages.Registration) bool {
	return a.URL == b.URL && a.Role == b.Role && a.Speed == b.Speed && slices.Equal(a.Models, b.Models)
}

// result sums up the run.
func (s *loadSim) result(elapsed time.Duration, ch *churner, samples [][]time.Duration) LoadSimResult {
	res := LoadSimResult{
		Acquires: s.acquires.Load(), Cycles: s.cycles.Load(), Leases: s.leases.Load(),
		Releases: s.releases.Load(), NoReplica: s.noReplica.Load(), Outcomes: map[messages.Outcome]int64{},
		Churn: ch.counts, Replicas: len(ch.regs), Elapsed: elapsed,
	}
	for i, o := range simOutcomes {
		res.Outcomes[o] = s.outcomes[i].Load()
	}
	if all := slices.Concat(samples...); len(all) > 0 {
		slices.Sort(all)
		res.AcquireP99 = all[len(all)*99/100]
	}
	return res
}

// String is a one-paragraph report of the run.
func (r LoadSimResult) String() string {
	return fmt.Sprintf("%d cycles (%d leases, %d releases) from %d acquires (%d found no replica) in %v, "+
		"acquire p99 %v; outcomes %v; churn %+v; %d replicas registered at the end",
		r.Cycles, r.Leases, r.Releases, r.Acquires, r.NoReplica, r.Elapsed.Round(time.Millisecond),
		r.AcquireP99, r.Outcomes, r.Churn, r.Replicas)
}
