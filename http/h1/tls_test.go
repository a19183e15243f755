package h1_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// testCert returns a self-signed certificate for 127.0.0.1 and a pool that trusts it.
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "h1 test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestTLS: with TLSConfig set, an https client is served over TLS (r.TLS set) on keep-alive
// connections, with HTTP/1.1 even when it offers h2; a client's hang-up still cancels a waiting
// request; a plain-text client gets no answer (net/http answers it 400) and the failed handshake
// is logged.
func TestTLS(t *testing.T) {
	cert, pool := testCert(t)
	wh := newWaitingHandler(t)
	mux := http.NewServeMux()
	mux.Handle("/wait", wh)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || !r.TLS.HandshakeComplete {
			t.Errorf("r.TLS = %+v", r.TLS)
			return
		}
		io.WriteString(w, r.Proto+" "+tls.VersionName(r.TLS.Version))
	})
	ts := startH1(t, &h1.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: waitLimit,
	})

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: waitLimit}
	for i := range 3 {
		var reused bool
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "https://"+ts.addr+"/", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || resp.ProtoMajor != 1 || !strings.HasPrefix(string(b), "HTTP/1.1 TLS") {
			t.Fatalf("answer %d %s %q %v", resp.StatusCode, resp.Proto, b, err)
		}
		if resp.TLS == nil {
			t.Fatal("the answer came without TLS")
		}
		if i > 0 && !reused {
			t.Errorf("request %d did not reuse the keep-alive connection", i)
		}
	}

	// Plain text on the TLS port: no answer, and a logged handshake failure.
	rc := dialRaw(t, ts.addr)
	rc.write("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
	if !rc.waitClosed(waitLimit) {
		t.Fatal("a plain-text client's connection stays open")
	}
	if log := ts.log.String(); !strings.Contains(log, "TLS handshake error") {
		t.Errorf("log %q", log)
	}

	// A hang-up over TLS is seen on the TCP connection under it.
	if runtime.GOOS != "linux" {
		return
	}
	nc, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(nc, "GET /wait HTTP/1.1\r\nHost: h\r\n\r\n")
	waitFor(t, wh.started, "the waiting request")
	at := time.Now()
	nc.Close()
	wh.expectCancelled(t, at)
}
