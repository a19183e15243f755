package proxytest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// simCluster is a registry actor with its replica population and a fake probe, shared by RunLoadSim
// and the benchmarks.
type simCluster struct {
	e     *actor.Engine
	reg   *actors.Registry
	probe *simProbe
	errs  *errorCounter
}

// startSimCluster starts a registry with a fast fake probe and registers n replicas, healthy.
func startSimCluster(healthInterval time.Duration, n int) (*simCluster, error) {
	e, err := actor.NewEngine(actor.NewEngineConfig())
	if err != nil {
		return nil, err
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	errs := &errorCounter{}
	log.AddHook(errs)
	probe := &simProbe{failing: map[string]bool{}}
	reg := actors.SpawnRegistry(e, actors.Config{
		HealthInterval:  healthInterval,
		HealthTimeout:   time.Second,
		CircuitCooldown: time.Millisecond, // breakers open and close all through the run
		Probe:           probe.probe,
		Log:             log,
	})
	c := &simCluster{e: e, reg: reg, probe: probe, errs: errs}
	for i := range n {
		if err := c.reg.Register(context.Background(), simRegistration(i, 0), messages.HealthHealthy); err != nil {
			c.stop()
			return nil, fmt.Errorf("register %s: %w", simURL(i), err)
		}
	}
	return c, nil
}

func (c *simCluster) stop() {
	actors.StopRegistry(c.e, c.reg.PID())
}

// simURL names replica i.
func simURL(i int) string {
	return fmt.Sprintf("http://sim-%03d.test:8000", i)
}

// simRegistration is replica i's declaration; version varies the models and speed of a replacement.
// Six in ten replicas are Hybrid, two Prefill, two Decode; each serves one or two models; one in four
// declares no speed.
func simRegistration(i, version int) messages.Registration {
	role := messages.Hybrid
	switch i % 10 {
	case 6, 7:
		role = messages.Prefill
	case 8, 9:
		role = messages.Decode
	}
	models := []string{simModels[(i+version)%len(simModels)]}
	if i%3 == 0 {
		models = append(models, simModels[(i+version+1)%len(simModels)])
	}
	speed := 0.0
	if (i+version)%4 != 0 {
		speed = float64(1 + (i+version)%50)
	}
	return messages.Registration{URL: simURL(i), Models: models, Role: role, Speed: speed}
}

// simProbe is the replicas' health: healthy unless the run made a replica fail. It answers at once.
type simProbe struct {
	mu      sync.Mutex
	failing map[string]bool
}

func (p *simProbe) set(url string, failing bool) {
	p.mu.Lock()
	p.failing[url] = failing
	p.mu.Unlock()
}

func (p *simProbe) probe(_ context.Context, url string) (messages.Health, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failing[url] {
		return "", errors.New("simulated replica is unhealthy")
	}
	return messages.HealthHealthy, nil
}

// errorCounter is a log hook that counts what the registry logs at Error and keeps the first message:
// the registry logs a release without a matching acquire (a count that would go negative) and a
// panicking actor at that level.
type errorCounter struct {
	n     atomic.Int64
	first atomic.Pointer[string]
}

func (h *errorCounter) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel}
}

func (h *errorCounter) Fire(e *logrus.Entry) error {
	msg := fmt.Sprintf("%s %v", e.Message, e.Data)
	h.first.CompareAndSwap(nil, &msg) // before counting, so that a count above 0 has its message
	h.n.Add(1)
	return nil
}
