package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/actors"
)

func TestServeBadFlagExits2WithOneLineNamingTheFlag(t *testing.T) {
	// A run that parsed would serve until its context ends: this one has ended already, so a case
	// that wrongly parses returns 0 or 1 at once instead of hanging.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"--bogus"}, nil, "unknown flag --bogus"},
		{"bad port", []string{"--port", "abc"}, nil, `invalid value "abc" for --port: want a number 0-65535`},
		{"port out of range", []string{"--port=70000"}, nil, "--port"},
		{"bad alias value", []string{"--server-port", "x"}, nil, "--server-port"},
		{"missing value", []string{"--port"}, nil, "missing value for --port"},
		{"bad duration", []string{"--health-interval", "10"}, nil, "--health-interval"},
		{"negative duration", []string{"--upstream-timeout", "-1s"}, nil, "--upstream-timeout"},
		{"bad max-body", []string{"--max-body", "12XB"}, nil, "--max-body"},
		{"unknown routing strategy", []string{"--routing-strategy", "round_robin"}, nil, "--routing-strategy"},
		{"unknown serving strategy", []string{"--serving-strategy", "Disagg"}, nil, "--serving-strategy"},
		{"unknown log level", []string{"--log-level", "TRACE"}, nil, "want one of DEBUG, INFO, WARNING, ERROR (or CRITICAL, FATAL, NOTSET, WARN)"},
		{"unknown log format", []string{"--log-format", "xml"}, nil, "--log-format"},
		{"ssl without files", []string{"--ssl"}, map[string]string{"SSL_KEYFILE": "", "SSL_CERTFILE": ""}, "--ssl"},
		{"ssl with missing files", []string{"--ssl"}, map[string]string{"SSL_KEYFILE": "/nonexistent/key.pem", "SSL_CERTFILE": "/nonexistent/cert.pem"}, "--ssl"},
		{"tls-key without tls-cert", []string{"--tls-key", "/nonexistent/key.pem"}, nil, "--tls-cert"},
		{"bad bool", []string{"--ssl=maybe"}, nil, "--ssl"},
		{"zero health failures", []string{"--health-failures", "0"}, nil, "--health-failures"},
		{"bad node URL", []string{"--nodes", "http://ok:1,localhost:8000"}, nil, "--nodes"},
		{"node URL with credentials", []string{"--nodes", "http://ok:2,http://bob:hunter2@ok:1"}, nil, "must not carry credentials"},
		{"bad node URL with credentials", []string{"--nodes", "http://bob:hunter2@ok:1/x?#%zz"}, nil, "--nodes"},
		{"bad env value", nil, map[string]string{"LMPROXY_PORT": "abc"}, "$LMPROXY_PORT for --port"},
		{"bad LMDeploy env value", nil, map[string]string{"LMDEPLOY_HEALTH_CHECK_TIMEOUT": "soon"}, "--health-timeout"},
		{"bad heart-beat env value", nil, map[string]string{"LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION": "often"},
			`invalid value "often" in $LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION for --health-interval`},
		{"zero heart-beat env value", nil, map[string]string{"LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION": "0"},
			"$LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION for --health-interval"},
		{"stray argument", []string{"extra"}, nil, `"extra"`},
		{"host that does not resolve", []string{"--host", "999.1.1.1"}, nil, `invalid value "999.1.1.1" for --host`},
		{"alias host that does not resolve", []string{"--server-name", "999.1.1.1"}, nil, "--server-name"},
		{"env host that does not resolve", nil, map[string]string{"LMPROXY_HOST": "999.1.1.1"}, "$LMPROXY_HOST for --host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			require.Equal(t, 2, runServe(ctx, tc.args, &stdout, &stderr), stderr.String())
			requireOneLine(t, stderr.String(), tc.want)
			require.NotContains(t, stderr.String(), "hunter2", "a password is not shown")
			require.True(t, strings.HasPrefix(stderr.String(), "lmproxy serve: "), stderr.String())
			require.Empty(t, stdout.String())
		})
	}
}

// An address no interface of this machine has fails only when the proxy listens; nothing listened
// before, so it is still the flag's error.
func TestServeHostNotOfThisMachineExits2NamingTheFlag(t *testing.T) {
	const host = "192.0.2.1" // TEST-NET-1 (RFC 5737): documentation only, on no real interface
	if ln, err := net.Listen("tcp", net.JoinHostPort(host, "0")); err == nil {
		ln.Close()
		t.Skip("this machine binds addresses it does not have (net.ipv4.ip_nonlocal_bind)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		args []string
		env  string
	}{
		{args: []string{"--host", host}},
		{args: []string{"--server-name", host}},
		{env: host},
	} {
		t.Setenv("LMPROXY_HOST", tc.env)
		var stdout, stderr bytes.Buffer
		require.Equal(t, 2, runServe(ctx, append(tc.args, "--port", "0"), &stdout, &stderr), stderr.String())
		requireOneLine(t, stderr.String(), `lmproxy serve: invalid value "192.0.2.1" for --host: not an address of this machine`)
		require.Empty(t, stdout.String())
	}
}

func TestServeHostTakesAnAddressANameOrNothing(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1", "localhost", ""} {
		require.Equal(t, host, parseServe(t, "--host", host).host)
	}
	t.Setenv("LMPROXY_HOST", "localhost")
	require.Equal(t, "localhost", parseServe(t).host)
}

func TestReplicaBadFlagExits2WithOneLineNamingTheFlag(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, args := range [][]string{
		{"--role", "Boss"},
		{"--proxy-url", "localhost:8000"},
		{"--tokens", "0"},
		{"--speed", "-1"},
		{"--ttft", "fast"},
		{"--health", "dead"},
		{"--error-status", "200"},
		{"--cut-after", "-2"},
	} {
		var stdout, stderr bytes.Buffer
		require.Equal(t, 2, runReplica(ctx, args, &stdout, &stderr), stderr.String())
		requireOneLine(t, stderr.String(), "lmproxy replica: invalid value")
		require.Contains(t, stderr.String(), args[0])
	}
}

func TestServeHelpPrintsFlagsAliasesAndEnvAndExits0(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, runServe(context.Background(), []string{"--help"}, &stdout, &stderr))
	for _, want := range []string{"--host, --server-name", "--port, --server-port", "LMPROXY_PORT",
		"AIOHTTP_TIMEOUT (seconds)", "LMDEPLOY_HEALTH_CHECK_INTERVAL", "LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION (seconds)",
		"min_observed_latency", "(default 64MiB)"} {
		require.Contains(t, stdout.String(), want)
	}
	require.Empty(t, stderr.String())
}

// parseServe parses args as `lmproxy serve` would.
func parseServe(t *testing.T, args ...string) *serveOptions {
	t.Helper()
	o, s := newServeOptions()
	require.NoError(t, s.parse(args))
	return o
}

func TestServeDefaults(t *testing.T) {
	o := parseServe(t)
	require.Equal(t, "0.0.0.0", o.host)
	require.Equal(t, 8000, o.port)
	require.Equal(t, "Hybrid", o.servingStrategy)
	require.Equal(t, "min_expected_latency", o.routingStrategy)
	require.Equal(t, "INFO", o.log.level)
	require.Equal(t, 10*time.Second, o.healthInterval)
	require.Equal(t, 5*time.Second, o.healthTimeout)
	require.Equal(t, 2, o.healthFailures)
	require.Zero(t, o.upstreamTimeout)
	require.Equal(t, int64(64<<20), o.maxBody)
	require.Equal(t, "RDMA", o.migrationProtocol)
	require.Equal(t, "RoCE", o.linkType)
	require.Equal(t, 30*time.Second, o.shutdownTimeout)
}

func TestEnvIsReadAndTheFlagWins(t *testing.T) {
	t.Setenv("LMPROXY_PORT", "9000")
	require.Equal(t, 9000, parseServe(t).port)
	require.Equal(t, 9001, parseServe(t, "--port", "9001").port)
	require.Equal(t, 9002, parseServe(t, "--server-port=9002").port, "an alias counts as the flag")
}

func TestLMDeployEnv(t *testing.T) {
	t.Setenv("AIOHTTP_TIMEOUT", "30")
	t.Setenv("AIOHTTP_LIMIT", "100")
	t.Setenv("AIOHTTP_LIMIT_PER_HOST", "10")
	t.Setenv("LMDEPLOY_HEALTH_CHECK_INTERVAL", "2.5")
	t.Setenv("LMDEPLOY_HEALTH_CHECK_TIMEOUT", "1m")
	o := parseServe(t)
	require.Equal(t, 30*time.Second, o.upstreamTimeout)
	require.Equal(t, 100, o.maxConns)
	require.Equal(t, 10, o.maxConnsPerHost)
	require.Equal(t, 2500*time.Millisecond, o.healthInterval)
	require.Equal(t, time.Minute, o.healthTimeout, "a Go duration works too")

	t.Setenv("LMPROXY_UPSTREAM_TIMEOUT", "45s")
	require.Equal(t, 45*time.Second, parseServe(t).upstreamTimeout, "LMPROXY_ beats LMDeploy's variable")
	require.Equal(t, time.Minute, parseServe(t, "--upstream-timeout", "1m").upstreamTimeout, "the flag beats both")
}

// LMDeploy's proxy probes every replica's /health each $LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION
// seconds (proxy.py), so an environment set up for it keeps its interval; lmproxy's own variables, and
// the SPEC's LMDEPLOY_HEALTH_CHECK_INTERVAL, come first, and the flag beats them all.
func TestHeartBeatExpirationSetsTheHealthInterval(t *testing.T) {
	t.Setenv("LMPROXY_HEALTH_INTERVAL", "") // empty is unset: the caller's own settings stay out
	t.Setenv("LMDEPLOY_HEALTH_CHECK_INTERVAL", "")
	t.Setenv("LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION", "90")
	require.Equal(t, 90*time.Second, parseServe(t).healthInterval)

	t.Setenv("LMDEPLOY_HEALTH_CHECK_INTERVAL", "20")
	require.Equal(t, 20*time.Second, parseServe(t).healthInterval, "LMDEPLOY_HEALTH_CHECK_INTERVAL comes first")
	t.Setenv("LMPROXY_HEALTH_INTERVAL", "15s")
	require.Equal(t, 15*time.Second, parseServe(t).healthInterval, "LMPROXY_HEALTH_INTERVAL comes first")
	require.Equal(t, 5*time.Second, parseServe(t, "--health-interval", "5s").healthInterval, "the flag beats them all")
}

func TestAliasesAndWordFlags(t *testing.T) {
	o := parseServe(t, "--server-name", "127.0.0.1", "--server-port", "8080", "--log-level", "warn",
		"--serving-strategy", "distserve", "--migration-protocol=nvlink", "--link-type", "ib")
	require.Equal(t, "127.0.0.1", o.host)
	require.Equal(t, 8080, o.port)
	require.Equal(t, "WARNING", o.log.level)
	require.Equal(t, "DistServe", o.servingStrategy)
	require.Equal(t, "NVLINK", o.migrationProtocol)
	require.Equal(t, "IB", o.linkType)
}

// Every flag of `lmdeploy serve proxy` (lmdeploy/cli/serve.py) is taken as LMDeploy spells it, so
// a command line written for it keeps working.
func TestEveryLMDeployProxyFlagIsAccepted(t *testing.T) {
	o := parseServe(t, "--server-name", "127.0.0.1", "--server-port", "8080", "--serving-strategy", "DistServe",
		"--dummy-prefill", "--routing-strategy", "random", "--disable-cache-status", "--migration-protocol", "RDMA",
		"--link-type", "IB", "--disable-gdr", "--api-keys", "k1", "k2", "--ssl", "--log-level", "CRITICAL")
	require.True(t, o.dummyPrefill)
	require.True(t, o.disableCacheStatus)
	require.True(t, o.disableGDR)
	require.True(t, o.ssl)
	require.Equal(t, []string{"k1", "k2"}, o.apiKeys)

	require.False(t, parseServe(t).disableGDR)
	t.Setenv("LMPROXY_DISABLE_GDR", "1")
	require.True(t, parseServe(t).disableGDR)
}

func TestListFlagsSplitAndRepeat(t *testing.T) {
	o := parseServe(t, "--api-keys", "a, b", "--api-keys=c", "--nodes", "http://h:1/,https://h:2")
	require.Equal(t, []string{"a", "b", "c"}, o.apiKeys)
	require.Equal(t, []string{"http://h:1/", "https://h:2"}, o.nodes)

	r, s := newReplicaOptions()
	require.Equal(t, []string{"sim-model"}, r.models)
	require.NoError(t, s.parse([]string{"--model", "a,b", "--model", "c"}))
	require.Equal(t, []string{"a", "b", "c"}, r.models, "the first value replaces the default")
}

// LMDeploy's proxy takes its API keys space-separated (nargs='*'): a command line written for it
// keeps working, and a positional argument anywhere else is still refused.
func TestAPIKeysSpaceSeparatedAsLMDeployTakesThem(t *testing.T) {
	o := parseServe(t, "--api-keys", "k1", "k2", "--port", "8080", "-api-keys", "k3")
	require.Equal(t, []string{"k1", "k2", "k3"}, o.apiKeys)
	require.Equal(t, 8080, o.port)

	_, s := newServeOptions()
	require.ErrorContains(t, s.parse([]string{"--port", "8080", "k1"}), `unexpected argument "k1"`)
	_, s = newServeOptions()
	require.ErrorContains(t, s.parse([]string{"--api-keys=k1", "k2"}), `unexpected argument "k2"`,
		"only the spaced form takes several values, as argparse's does")
}

// argparse's nargs='*' takes --api-keys with no value at all (LMDeploy then guards nothing), as a
// script's `--api-keys $KEYS` with $KEYS empty writes it.
func TestAPIKeysWithoutValueAsLMDeployTakesIt(t *testing.T) {
	o := parseServe(t, "--api-keys", "--port", "8080")
	require.Empty(t, o.apiKeys)
	require.Equal(t, 8080, o.port)

	t.Setenv("LMPROXY_API_KEYS", "env-key")
	require.Empty(t, parseServe(t, "--api-keys").apiKeys, "the flag, though empty, beats the environment")
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"1024": 1024, "1KiB": 1 << 10, "64MiB": 64 << 20, "1GiB": 1 << 30, "2TiB": 2 << 40,
		"1KB": 1000, "2MB": 2e6, "1GB": 1e9, "64mib": 64 << 20, "64 MiB": 64 << 20, "10B": 10, " 5 ": 5,
	} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "0", "-1", "1.5MiB", "MiB", "12XB", "1PiB", "9999999999TiB", "0x10"} {
		_, err := parseSize(in)
		require.Error(t, err, in)
	}
	require.Equal(t, "64MiB", formatSize(64<<20))
	require.Equal(t, "1536", formatSize(1536))
}

// The spaced form is read only where the flag package reads flags: not after "--", and not from a
// spelling it refuses ("---api-keys").
func TestSpacedValuesOnlyWhereFlagsAre(t *testing.T) {
	_, s := newServeOptions()
	require.ErrorContains(t, s.parse([]string{"--port", "8080", "--", "--api-keys", "k1"}), `unexpected argument "--api-keys"`)
	_, s = newServeOptions()
	require.ErrorContains(t, s.parse([]string{"---api-keys", "k1"}), "---api-keys")
}

// A state file that cannot be written is a bad --state-file, reported before anything listens
// rather than at the registry's first change; --disable-cache-status keeps no file and checks none.
func TestServeUnwritableStateFileExits2NamingTheFlag(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	blocker := filepath.Join(dir, "not-a-dir")
	require.NoError(t, os.WriteFile(blocker, nil, 0o600))
	listen := []string{"--host", "127.0.0.1", "--port", "0"}
	for _, tc := range []struct {
		name string
		args []string
		env  string
	}{
		{"parent is a file", []string{"--state-file", filepath.Join(blocker, "registry.json")}, ""},
		{"path is a directory", []string{"--state-file", dir}, ""},
		{"from the environment", nil, filepath.Join(blocker, "registry.json")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("LMPROXY_STATE_FILE", tc.env)
			var stdout, stderr bytes.Buffer
			require.Equal(t, 2, runServe(ctx, append(tc.args, listen...), &stdout, &stderr), stderr.String())
			requireOneLine(t, stderr.String(), "lmproxy serve: invalid value")
			require.Contains(t, stderr.String(), "for --state-file")
			require.Empty(t, stdout.String())
		})
	}
	var stdout, stderr bytes.Buffer
	args := append([]string{"--state-file", filepath.Join(blocker, "registry.json"), "--disable-cache-status"}, listen...)
	require.Equal(t, 0, runServe(ctx, args, &stdout, &stderr), stderr.String())

	// A default path nobody chose (a container whose HOME is not writable) does not stop the proxy:
	// it starts, and the failed saves are logged, as before the check.
	t.Setenv("LMPROXY_STATE_FILE", "")
	t.Setenv("XDG_STATE_HOME", blocker)
	stdout.Reset()
	stderr.Reset()
	require.Equal(t, 0, runServe(ctx, listen, &stdout, &stderr), stderr.String())

	// The same path given on the command line was chosen: it is checked.
	stdout.Reset()
	stderr.Reset()
	args = append([]string{"--state-file", actors.DefaultStatePath()}, listen...)
	require.Equal(t, 2, runServe(ctx, args, &stdout, &stderr), stderr.String())
	require.Contains(t, stderr.String(), "for --state-file")
}
