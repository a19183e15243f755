package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

func TestServeAnswersHealthAndExits0WhenCancelled(t *testing.T) {
	s, base := startServe(t)
	c := newClient(t)
	resp, err := c.Get(base + "/health")
	require.NoError(t, err)
	var body map[string]string
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "healthy", body["status"])

	require.Equal(t, 0, s.stop(t))
	c.CloseIdleConnections()
	_, err = c.Get(base + "/health")
	require.Error(t, err, "the listener is closed after the exit")
}

func TestServeListenFailureExits1(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	var stdout, stderr bytes.Buffer
	require.Equal(t, 1, runServe(context.Background(), []string{"--host", "127.0.0.1", "--port", port}, &stdout, &stderr))
	requireOneLine(t, stderr.String(), "cannot listen")
}

func TestServeRegistersNodes(t *testing.T) {
	r := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	_, base := startServe(t, "--nodes", r.URL)
	waitRegistered(t, base, r.URL)
}

// A replica that is not up when the proxy starts is registered once it is.
func TestServeRegistersNodeThatStartsLater(t *testing.T) {
	dead := proxytest.DeadAddr(t)
	s, base := startServe(t, "--nodes", dead)
	s.stderr.waitFor(t, "retrying in the background")

	u, err := url.Parse(dead)
	require.NoError(t, err)
	port, err := strconv.Atoi(u.Port())
	require.NoError(t, err)
	r := proxytest.NewReplica(proxytest.ReplicaConfig{Port: port})
	require.NoError(t, r.Start())
	defer func() { require.NoError(t, r.Close()) }()
	waitRegistered(t, base, r.URL)
}

// waitRegistered polls the proxy's /nodes/status until replica is registered, and fails the test
// after 10s.
func waitRegistered(t *testing.T, proxy, replica string) {
	t.Helper()
	c := newClient(t)
	require.Eventually(t, func() bool {
		status, err := nodesStatus(c, proxy)
		_, ok := status[replica]
		return err == nil && ok
	}, 10*time.Second, 10*time.Millisecond, "replica %s not registered", replica)
}

// nodesStatus reads the proxy's GET /nodes/status.
func nodesStatus(c *http.Client, proxy string) (map[string]json.RawMessage, error) {
	resp, err := c.Get(proxy + "/nodes/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /nodes/status: %s", resp.Status)
	}
	var status map[string]json.RawMessage
	return status, json.NewDecoder(resp.Body).Decode(&status)
}

func TestServeConfigsMapTheFlags(t *testing.T) {
	o := parseServe(t, "--api-keys", "k", "--admin-keys", "a", "--max-body", "1KiB", "--upstream-timeout", "3s",
		"--max-conns", "7", "--max-conns-per-host", "3", "--health-interval", "1s", "--health-timeout", "2s",
		"--health-failures", "4", "--routing-strategy", "random")
	hc, ac := o.configs(nil, nil)
	require.Equal(t, []string{"k"}, hc.APIKeys)
	require.Equal(t, []string{"a"}, hc.AdminKeys)
	require.Equal(t, int64(1024), hc.MaxBody)
	require.Equal(t, 3*time.Second, hc.UpstreamTimeout)
	require.Equal(t, 7, hc.MaxConns)
	require.Equal(t, 3, hc.MaxConnsPerHost)
	require.Equal(t, 2*time.Second, hc.ProbeTimeout)
	require.Nil(t, hc.DistServe, "Hybrid")
	require.Equal(t, "random", ac.Strategy.Name())
	require.Equal(t, time.Second, ac.HealthInterval)
	require.Equal(t, 2*time.Second, ac.HealthTimeout)
	require.Equal(t, 4, ac.HealthFailures)

	o = parseServe(t, "--serving-strategy", "DistServe", "--migration-protocol", "TCP", "--link-type", "IB", "--dummy-prefill",
		"--disable-gdr")
	hc, _ = o.configs(nil, nil)
	require.Equal(t, &lmhttp.DistServeConfig{MigrationProtocol: "TCP", LinkType: "IB", DummyPrefill: true, DisableGDR: true}, hc.DistServe)
}

// Over TLS the proxy answers, and its replicas are told that their clients' requests came by https.
func TestServeTLS(t *testing.T) {
	cert, key, pool := writeSelfSigned(t)
	r := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	_, base := startServe(t, "--tls-cert", cert, "--tls-key", key, "--nodes", r.URL)
	require.True(t, strings.HasPrefix(base, "https://"), base)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	resp, err := c.Get(base + "/health")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Eventually(t, func() bool {
		resp, err := c.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"sim-model"}`))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 10*time.Millisecond, "no answer from the replica through the proxy")
	got := r.Requests("/v1/chat/completions")
	require.Equal(t, "https", got[len(got)-1].Header.Get("X-Forwarded-Proto"))
}

// writeSelfSigned writes a certificate for 127.0.0.1 and its key as PEM files, and returns their
// paths and a pool that trusts the certificate.
func writeSelfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	parsed, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool = x509.NewCertPool()
	pool.AddCert(parsed)
	return certFile, keyFile, pool
}

// The access log's lines go out in batches, soon after their requests, and every one of them
// before the shutdown's lines.
func TestServeWritesTheAccessLog(t *testing.T) {
	r := proxytest.StartReplica(t, proxytest.ReplicaConfig{})
	s, base := startServe(t, "--nodes", r.URL)
	waitRegistered(t, base, r.URL)
	c := newClient(t)
	for i := 0; i < 3; i++ {
		resp, err := c.Get(base + "/v1/models")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	s.stderr.waitFor(t, `"path":"/v1/models"`)
	resp, err := c.Get(base + "/health")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 0, s.stop(t))
	log := s.stderr.String()
	require.Equal(t, 3, strings.Count(log, `"path":"/v1/models"`), log)
	last := strings.Index(log, `"path":"/health"`)
	require.Positive(t, last, "the last access line was written at shutdown: %s", log)
	require.Less(t, last, strings.Index(log, `"msg":"shutting down`), log)
	require.Regexp(t, `"timeout":"[0-9.]+m?s"`, log, "a duration reads as one in JSON too")
}
