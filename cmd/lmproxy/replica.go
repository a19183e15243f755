package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/lmproxy/lmproxy/proxytest"
)

func init() {
	register(command{name: "replica", summary: "run a simulated replica (demos, tests, load simulation)", run: runReplica})
}

// replicaOptions are the flags of `lmproxy replica` (SPEC §3, §8).
type replicaOptions struct {
	host     string
	port     int
	models   []string
	role     string
	proxyURL string
	speed    float64
	ttft     time.Duration
	itl      time.Duration
	tokens   int
	adminKey string
	log      logOptions
	// The faults at start (proxytest.Fault) and the first /health status.
	errorStatus int
	cutAfter    int
	hang        bool
	health      string
}

// newReplicaOptions returns the defaults and the flag set that fills them in.
func newReplicaOptions() (*replicaOptions, *flagSet) {
	// Port 23333 is LMDeploy api_server's, so scripts written for it find the replica.
	o := &replicaOptions{host: "127.0.0.1", port: 23333, models: []string{"sim-model"}, role: "Hybrid", tokens: 16,
		health: "healthy"}
	s := newFlagSet("lmproxy replica", "Runs a simulated LMDeploy api_server: /v1/models, /health, chat and completions\n"+
		"(JSON and SSE), /terminate (then it exits) and /distserve/*, with tunable timing\n"+
		"and faults. At run time, POST /sim/health and POST /sim/fault switch /health's\n"+
		"status and the fault; GET /sim/received and GET /sim/stats show what it received\n"+
		"and what its clients cancelled.")
	s.add(stringValue{p: &o.host}, "host", "HOST", "listen address").alias("server-name")
	s.add(intValue{&o.port, 0, 65535}, "port", "PORT", "listen port; 0 picks a free one").alias("server-port")
	s.add(&listValue{p: &o.models}, "model", "NAMES", "models served; comma-separated, may be repeated")
	s.add(enumValue{p: &o.role, choices: []string{"Hybrid", "Prefill", "Decode"}}, "role", "ROLE", "Hybrid, Prefill or Decode")
	s.add(stringValue{p: &o.proxyURL, check: checkURL}, "proxy-url", "URL", "register with this proxy in the background\n"+
		"(retried until it answers) and leave it on SIGINT/SIGTERM or GET /terminate")
	s.add(floatValue{&o.speed}, "speed", "N", "speed declared to the proxy; 0 declares none")
	s.add(durationValue{p: &o.ttft}, "ttft", "DURATION", "delay before the first token")
	s.add(durationValue{p: &o.itl}, "itl", "DURATION", "delay between two tokens")
	s.add(intValue{&o.tokens, 1, math.MaxInt}, "tokens", "N", "tokens per answer")
	s.add(stringValue{p: &o.adminKey}, "admin-key", "KEY", "Bearer key for the proxy's /nodes/* (its --admin-keys)")
	s.add(enumValue{p: &o.health, choices: proxytest.HealthStatuses}, "health", "STATUS", "what GET /health answers: healthy, sleeping (200),\n"+
		"initializing, unhealthy (503); empty, error, hang: a broken server")
	s.add(statusValue{&o.errorStatus}, "error-status", "STATUS", "answer every POST /v1/* with this status (400-599)\n"+
		"and an LMDeploy error body; 0: no error")
	s.add(intValue{&o.cutAfter, -1, math.MaxInt}, "cut-after", "N", "break streams after N SSE events, other answers before\n"+
		"any byte; -1: every answer before any byte; 0: no cut")
	s.add(boolValue{&o.hang}, "hang", "", "never answer a POST /v1/* (until the client leaves);\n"+
		"--hang wins over --error-status, which wins over --cut-after")
	o.log.register(s)
	return o, s
}

// errTerminated is why a replica stops after GET /terminate.
var errTerminated = errors.New("terminated by GET /terminate")

// runReplica is `lmproxy replica`: it serves until ctx ends or GET /terminate is answered, then
// leaves the proxy and stops.
func runReplica(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, s := newReplicaOptions()
	if err := s.parse(args); err != nil {
		return s.exit(err, stdout, stderr)
	}
	log := o.log.logger(stderr)
	// GET /terminate ends the command as a signal does, since LMDeploy's api_server exits after it.
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	r := proxytest.NewReplica(proxytest.ReplicaConfig{
		Host: o.host, Port: o.port, Models: o.models, Role: o.role, Speed: o.speed, TTFT: o.ttft, ITL: o.itl,
		Tokens: o.tokens, ProxyURL: o.proxyURL, AdminKey: o.adminKey, Logger: log,
		OnTerminate: func() { stop(errTerminated) },
	})
	r.SetHealth(o.health)
	r.SetFault(proxytest.Fault{Status: o.errorStatus, CutAfter: o.cutAfter, Hang: o.hang})
	if err := r.Start(); err != nil {
		log.WithError(err).Error("cannot start the replica")
		return 1
	}
	// Scripts read the address from stdout; the logs go to stderr.
	fmt.Fprintf(stdout, "replica listening on %s\n", r.URL)
	<-ctx.Done()
	if errors.Is(context.Cause(ctx), errTerminated) {
		log.Info("GET /terminate: shutting down")
	}
	if err := r.Close(); err != nil {
		log.WithError(err).Error("replica did not stop cleanly")
		return 1
	}
	return 0
}
