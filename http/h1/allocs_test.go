//go:build !race

package h1_test

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/http/h1"
)

// TestKeepAliveAllocations bounds what h1 allocates for one small request on a keep-alive
// connection, its handler's reading and writing included (the client allocates nothing): the
// request, its URL, head and context, the body and the ResponseWriter. The header maps are the
// connection's, reused. (Not under the race detector, whose runtime allocates too.)
func TestKeepAliveAllocations(t *testing.T) {
	handler, req, body := echoJSON()
	ts := startH1(t, &h1.Server{Handler: handler})
	nc, err := net.Dial("tcp", ts.addr)
	require.NoError(t, err)
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReaderSize(nc, 4<<10)
	roundTrip := func() {
		if _, err := nc.Write(req); err != nil {
			t.Fatal(err)
		}
		if n := readAnswer(t, br); n != len(body) {
			t.Fatalf("answer of %d bytes, want %d", n, len(body))
		}
	}
	roundTrip()
	allocs := testing.AllocsPerRun(200, roundTrip)
	require.LessOrEqual(t, allocs, 11.0, "allocations per request")
}
