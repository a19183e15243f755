package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy"
	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/actors/routing"
	lmhttp "github.com/lmproxy/lmproxy/http"
)

func init() {
	register(command{name: "serve", summary: "run the proxy", run: runServe})
}

// serveOptions are the flags of `lmproxy serve` (SPEC §3).
type serveOptions struct {
	host               string
	port               int
	servingStrategy    string
	routingStrategy    string
	apiKeys, adminKeys []string
	ssl                bool
	tlsKey, tlsCert    string
	log                logOptions
	nodes              []string
	stateFile          string
	disableCacheStatus bool
	healthInterval     time.Duration
	healthTimeout      time.Duration
	healthFailures     int
	upstreamTimeout    time.Duration
	maxConns           int
	maxConnsPerHost    int
	maxBody            int64
	migrationProtocol  string
	linkType           string
	dummyPrefill       bool
	disableGDR         bool
	shutdownTimeout    time.Duration
}

// newServeOptions returns the defaults and the flag set that fills them in.
func newServeOptions() (*serveOptions, *flagSet) {
	o := &serveOptions{
		host: "0.0.0.0", port: 8000, servingStrategy: "Hybrid", routingStrategy: routing.NameMinExpectedLatency,
		stateFile: actors.DefaultStatePath(), healthInterval: 10 * time.Second, healthTimeout: 5 * time.Second,
		healthFailures: 2, maxBody: 64 << 20, migrationProtocol: "RDMA", linkType: "RoCE",
		shutdownTimeout: 30 * time.Second,
	}
	s := newFlagSet("lmproxy serve", "Runs the proxy: an OpenAI-compatible request distributor in front of\n"+
		"LMDeploy api_server replicas, a drop-in replacement for `lmdeploy serve proxy`.")
	s.add(stringValue{p: &o.host, check: checkHost}, "host", "HOST",
		"listen address: an IP address of this machine or a name that resolves to one;\nempty means every interface").
		alias("server-name")
	s.add(intValue{&o.port, 0, 65535}, "port", "PORT", "listen port; 0 picks a free one").alias("server-port")
	s.add(enumValue{p: &o.servingStrategy, choices: []string{"Hybrid", "DistServe"}}, "serving-strategy", "NAME",
		"Hybrid (one replica serves a request) or DistServe\n(prefill on a Prefill replica, then decode on a Decode replica)")
	s.add(enumValue{p: &o.routingStrategy, choices: routing.Names()}, "routing-strategy", "NAME",
		strings.Join(routing.Names(), ", ")+":\nhow a replica is chosen among those that serve the model")
	s.add(&listValue{p: &o.apiKeys}, "api-keys", "KEYS", "comma-separated (or, as with LMDeploy, space-separated) keys;\n"+
		"when set, /v1/* needs Authorization: Bearer <key>").spacedValues()
	s.add(&listValue{p: &o.adminKeys}, "admin-keys", "KEYS", "comma-separated keys; when set, /nodes/* and /distserve/* need one")
	s.add(boolValue{&o.ssl}, "ssl", "", "serve HTTPS with the key and certificate in $SSL_KEYFILE and $SSL_CERTFILE,\n"+
		"or in --tls-key and --tls-cert")
	s.add(stringValue{p: &o.tlsKey}, "tls-key", "FILE", "TLS private key (PEM); turns TLS on")
	s.add(stringValue{p: &o.tlsCert}, "tls-cert", "FILE", "TLS certificate chain (PEM); turns TLS on")
	o.log.register(s)
	s.add(&listValue{p: &o.nodes, check: checkReplicaURL}, "nodes", "URLS", "comma-separated replica URLs registered at start as POST /nodes/add\n"+
		"would; one that does not answer yet is retried in the background until it does,\n"+
		"so replicas may start after the proxy")
	s.add(stringValue{p: &o.stateFile}, "state-file", "FILE", "where the registry of replicas is kept across restarts, as LMDeploy's\n"+
		"proxy_config.json keeps it; its directory is created if missing, and a path\n"+
		"given where no file can be written is refused at start (the default one\n"+
		"only logs its failed saves)")
	s.add(boolValue{&o.disableCacheStatus}, "disable-cache-status", "", "do not keep the registry in --state-file")
	s.add(durationValue{&o.healthInterval, true}, "health-interval", "DURATION", "time between two health probes of one replica").
		env("LMDEPLOY_HEALTH_CHECK_INTERVAL", true).
		// LMDeploy's proxy probes every replica's /health this often: the same knob.
		env("LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION", true)
	s.add(durationValue{&o.healthTimeout, true}, "health-timeout", "DURATION", "timeout of one health probe and of the probe of /nodes/add").
		env("LMDEPLOY_HEALTH_CHECK_TIMEOUT", true)
	s.add(intValue{&o.healthFailures, 1, math.MaxInt}, "health-failures", "N", "consecutive failed probes before a replica is evicted from routing")
	s.add(durationValue{p: &o.upstreamTimeout}, "upstream-timeout", "DURATION", "total time of one upstream request; 0 means none").
		env("AIOHTTP_TIMEOUT", true)
	s.add(intValue{&o.maxConns, 0, math.MaxInt}, "max-conns", "N", "upstream connections in all; 0 means no limit").
		env("AIOHTTP_LIMIT", false)
	s.add(intValue{&o.maxConnsPerHost, 0, math.MaxInt}, "max-conns-per-host", "N", "upstream connections per replica; 0 means no limit").
		env("AIOHTTP_LIMIT_PER_HOST", false)
	s.add(sizeValue{&o.maxBody}, "max-body", "SIZE", "larger request bodies get 413 (admin bodies: at most 1MiB); bytes (1048576)\n"+
		"or with a unit: KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000)")
	s.add(enumValue{p: &o.migrationProtocol, choices: []string{"TCP", "RDMA", "NVLINK"}}, "migration-protocol", "NAME",
		"TCP, RDMA or NVLINK: how DistServe moves the KV cache")
	s.add(enumValue{p: &o.linkType, choices: []string{"RoCE", "IB"}}, "link-type", "NAME", "RoCE or IB: DistServe's RDMA link")
	s.add(boolValue{&o.dummyPrefill}, "dummy-prefill", "", "DistServe without a prefill phase")
	s.add(boolValue{&o.disableGDR}, "disable-gdr", "", "DistServe RDMA links without GPU Direct RDMA (with_gdr false in p2p_initialize)")
	s.add(durationValue{p: &o.shutdownTimeout}, "shutdown-timeout", "DURATION", "on SIGINT/SIGTERM, how long running requests and streams\n"+
		"may go on before they are cut")
	return o, s
}

// runServe is `lmproxy serve`: it parses args, serves until ctx ends, then shuts down gracefully.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, s := newServeOptions()
	if err := s.parse(args); err != nil {
		return s.exit(err, stdout, stderr)
	}
	tlsCfg, err := o.tlsConfig()
	if err != nil {
		return s.exit(err, stdout, stderr)
	}
	if err := o.checkStateFile(s.chosen("state-file")); err != nil {
		return s.exit(err, stdout, stderr)
	}
	// The access log's lines wait up to accessLogInterval to go out in batches; every other line
	// goes out at once, after them.
	batch := newLogBatch(stderr, accessLogInterval)
	defer batch.Close()
	log := o.log.logger(batch.Direct())
	defer routeSlog(log)()
	warmHeap()
	p, err := o.start(log, o.log.logger(batch), tlsCfg)
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		// The proxy's listener is the first thing that binds, so nothing listened yet: an address
		// that is not this machine's is still a bad flag (SPEC §3), not an operational failure.
		err = fmt.Errorf("invalid value %q for --host: not an address of this machine: %w", o.host, err)
		return s.exit(err, stdout, stderr)
	}
	if err != nil {
		log.WithError(err).Error("cannot listen on " + o.addr())
		return 1
	}
	return o.serve(ctx, p, log, tlsCfg)
}

// accessLogInterval is how long an access line may wait to go out with others.
const accessLogInterval = 100 * time.Millisecond

// tlsConfig loads the key pair when TLS is asked for: --ssl takes the files from --tls-key and
// --tls-cert or else from LMDeploy's $SSL_KEYFILE and $SSL_CERTFILE; --tls-key or --tls-cert alone
// turn TLS on too. LMDeploy's variables alone do not, so an environment set up for another tool
// never switches the proxy to HTTPS. A nil config means plain HTTP.
func (o *serveOptions) tlsConfig() (*tls.Config, error) {
	key, cert := o.tlsKey, o.tlsCert
	if o.ssl {
		key, cert = cmp.Or(key, os.Getenv("SSL_KEYFILE")), cmp.Or(cert, os.Getenv("SSL_CERTFILE"))
	} else if key == "" && cert == "" {
		return nil, nil
	}
	if key == "" || cert == "" {
		return nil, errors.New("TLS (--ssl, --tls-key, --tls-cert) needs a key and a certificate: " +
			"give --tls-key and --tls-cert, or --ssl with $SSL_KEYFILE and $SSL_CERTFILE")
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, errors.New("TLS (--ssl, --tls-key, --tls-cert): cannot load the key pair: " + err.Error())
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// configs maps the options onto the HTTP server's and the registry's configurations.
func (o *serveOptions) configs(log logrus.FieldLogger, tlsCfg *tls.Config) (lmhttp.Config, actors.Config) {
	// The strategy's name was checked against routing.Names when the flag was set.
	strategy, _ := routing.New(o.routingStrategy, nil)
	hc := lmhttp.Config{
		APIKeys: o.apiKeys, AdminKeys: o.adminKeys, MaxBody: o.maxBody, UpstreamTimeout: o.upstreamTimeout,
		MaxConns: o.maxConns, MaxConnsPerHost: o.maxConnsPerHost,
		ProbeTimeout: o.healthTimeout, // /nodes/add's probe is a health probe too
		TLS:          tlsCfg, Log: log,
	}
	if o.servingStrategy == "DistServe" {
		hc.DistServe = &lmhttp.DistServeConfig{MigrationProtocol: o.migrationProtocol, LinkType: o.linkType,
			DummyPrefill: o.dummyPrefill, DisableGDR: o.disableGDR}
	}
	ac := actors.Config{
		Strategy: strategy, HealthInterval: o.healthInterval, HealthTimeout: o.healthTimeout,
		HealthFailures: o.healthFailures, Log: log,
	}
	return hc, ac
}

// addr is the address to listen on.
func (o *serveOptions) addr() string { return net.JoinHostPort(o.host, strconv.Itoa(o.port)) }

// persistedTo is where the registry is kept; "" when --disable-cache-status turns that off.
func (o *serveOptions) persistedTo() string {
	if o.disableCacheStatus {
		return ""
	}
	return o.stateFile
}

// checkStateFile refuses a --state-file that could not be written, before anything listens (SPEC
// §3): otherwise the proxy would serve and only fail, in its log, at the registry's first change.
// Only a path the user chose (chosen) is checked: where the default cannot be written (a container
// whose HOME is not), the proxy starts and logs the failed saves.
func (o *serveOptions) checkStateFile(chosen bool) error {
	if o.persistedTo() == "" || !chosen {
		return nil
	}
	if err := actors.CheckStateFile(o.stateFile); err != nil {
		return fmt.Errorf("invalid value %q for --state-file: cannot write there: %w", o.stateFile, err)
	}
	return nil
}

// start builds the proxy and listens; access receives the access log.
func (o *serveOptions) start(log, access *logrus.Logger, tlsCfg *tls.Config) (*lmproxy.Proxy, error) {
	hc, ac := o.configs(log, tlsCfg)
	hc.AccessLog = access
	return lmproxy.Start(lmproxy.Config{Addr: o.addr(), StateFile: o.persistedTo(), HTTP: hc, Actors: ac, Log: log})
}

// serve runs the started proxy until ctx ends, shuts it down and returns the exit status.
func (o *serveOptions) serve(ctx context.Context, p *lmproxy.Proxy, log *logrus.Logger, tlsCfg *tls.Config) int {
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	log.WithFields(logrus.Fields{"url": scheme + "://" + p.Server.Addr().String(), "state_file": o.persistedTo()}).Info("listening")
	waitNodes := registerNodes(ctx, p.Server, o.nodes, log)

	<-ctx.Done()
	log.WithField("timeout", o.shutdownTimeout.String()).Info("shutting down: waiting for running requests") // "30s", not nanoseconds in JSON
	waitNodes()
	closeCtx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := p.Close(closeCtx); err != nil {
		log.WithError(err).Warn("requests still running at --shutdown-timeout were cut")
	}
	log.Info("stopped")
	return 0
}
