package http

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/proxytest/goroutines"
)

// A request waits for its replica's answer without a read buffer (a replica may think for seconds
// before its head, and thousands of requests may wait at once), on a new connection and on one
// reused after a whole answer; the answer is then read whole. The wait is the request's last write's
// (netio's WriteWaitRead), with no readiness peek of its own.
func TestUpstreamWaitsForTheAnswerWithoutReadBuffer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()

	u := newUpstream(0, 0, 0)
	type answer struct {
		body string
		err  error
	}
	var replica net.Conn
	var rd *bufio.Reader
	for i := 0; i < 2; i++ {
		got := make(chan answer, 1)
		go func() {
			req := &replicaRequest{method: http.MethodPost, target: "http://" + ln.Addr().String(), uri: "/v1/completions", body: []byte("{}")}
			resp, err := u.RoundTrip(context.Background(), req)
			if err != nil {
				got <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			got <- answer{string(b), err}
		}()
		if replica == nil {
			select {
			case replica = <-accepted:
			case <-time.After(5 * time.Second):
				t.Fatal("no connection")
			}
			defer replica.Close()
			rd = bufio.NewReader(replica)
		}
		req, err := http.ReadRequest(rd)
		require.NoError(t, err, "request %d", i)
		io.Copy(io.Discard, req.Body)

		deadline := time.Now().Add(5 * time.Second)
		for !goroutines.WaitingForIO("netio.(*Conn).WriteWaitRead", "http.(*upstream).exchange") {
			require.True(t, time.Now().Before(deadline), "request %d did not wait in WriteWaitRead", i)
			time.Sleep(time.Millisecond)
		}
		io.WriteString(replica, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
		select {
		case a := <-got:
			require.NoError(t, a.err)
			require.Equal(t, "hello", a.body)
		case <-time.After(5 * time.Second):
			t.Fatal("no answer")
		}
	}
}
