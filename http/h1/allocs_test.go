//go:build !race

package h1_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/lmproxy/lmproxy/http/h1"
)

// TestKeepAliveAllocations bounds what h1 allocates for one small request on a keep-alive
// connection, its handler's reading and writing included (the client allocates nothing): the
// request, its URL, head and context, the body and the ResponseWriter. The header maps are the
// connection's, reused. (Not under the race detector, whose runtime allocates too.)
func TestKeepAliveAllocations(t *testing.T) {
	ts := startH1(t, &h1.Server{Handler: echoJSON()})
	roundTrip := echoClient(t, ts.addr)
	roundTrip()
	allocs := testing.AllocsPerRun(200, roundTrip)
	require.LessOrEqual(t, allocs, 11.0, "allocations per request")
}
