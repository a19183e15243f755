package main

import (
	"context"
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
}

// newReplicaOptions returns the defaults and the flag set that fills them in.
func newReplicaOptions() (*replicaOptions, *flagSet) {
	// Port 23333 is LMDeploy api_server's, so scripts written for it find the replica.
	o := &replicaOptions{host: "127.0.0.1", port: 23333, models: []string{"sim-model"}, role: "Hybrid", tokens: 16}
	s := newFlagSet("lmproxy replica", "Runs a simulated LMDeploy api_server: /v1/models, /health, chat and completions\n"+
		"(JSON and SSE), /terminate and /distserve/*, with tunable timing.")
	s.add(stringValue{p: &o.host}, "host", "HOST", "listen address").alias("server-name")
	s.add(intValue{&o.port, 0, 65535}, "port", "PORT", "listen port; 0 picks a free one").alias("server-port")
	s.add(&listValue{p: &o.models}, "model", "NAMES", "models served; comma-separated, may be repeated")
	s.add(enumValue{p: &o.role, choices: []string{"Hybrid", "Prefill", "Decode"}}, "role", "ROLE", "Hybrid, Prefill or Decode")
	s.add(stringValue{p: &o.proxyURL, check: checkURL}, "proxy-url", "URL", "register with this proxy in the background\n"+
		"(retried until it answers) and leave it on SIGINT/SIGTERM")
	s.add(floatValue{&o.speed}, "speed", "N", "speed declared to the proxy; 0 declares none")
	s.add(durationValue{p: &o.ttft}, "ttft", "DURATION", "delay before the first token")
	s.add(durationValue{p: &o.itl}, "itl", "DURATION", "delay between two tokens")
	s.add(intValue{&o.tokens, 1, math.MaxInt}, "tokens", "N", "tokens per answer")
	s.add(stringValue{p: &o.adminKey}, "admin-key", "KEY", "Bearer key for the proxy's /nodes/* (its --admin-keys)")
	o.log.register(s)
	return o, s
}

// runReplica is `lmproxy replica`: it serves until ctx ends, then leaves the proxy and stops.
func runReplica(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, s := newReplicaOptions()
	if err := s.parse(args); err != nil {
		return s.exit(err, stdout, stderr)
	}
	log := o.log.logger(stderr)
	r := proxytest.NewReplica(proxytest.ReplicaConfig{
		Host: o.host, Port: o.port, Models: o.models, Role: o.role, Speed: o.speed, TTFT: o.ttft, ITL: o.itl,
		Tokens: o.tokens, ProxyURL: o.proxyURL, AdminKey: o.adminKey, Logger: log,
	})
	if err := r.Start(); err != nil {
		log.WithError(err).Error("cannot start the replica")
		return 1
	}
	// Scripts read the address from stdout; the logs go to stderr.
	fmt.Fprintf(stdout, "replica listening on %s\n", r.URL)
	<-ctx.Done()
	if err := r.Close(); err != nil {
		log.WithError(err).Error("replica did not stop cleanly")
		return 1
	}
	return 0
}
