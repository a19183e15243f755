package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestReplicaRegistersWithProxyAndLeavesOnCancel(t *testing.T) {
	_, proxy := startServe(t)
	r := start(t, runReplica, "--port", "0", "--proxy-url", proxy, "--model", "m1,m2")
	line := r.stdout.waitFor(t, "replica listening on ")
	replica := strings.TrimSpace(strings.TrimPrefix(line, "replica listening on "))
	require.True(t, strings.HasPrefix(replica, "http://127.0.0.1:"), line)

	waitRegistered(t, proxy, replica)
	require.Equal(t, 0, r.stop(t))
	// The replica leaves the proxy before the command returns: no wait.
	status, err := nodesStatus(newClient(t), proxy)
	require.NoError(t, err)
	require.NotContains(t, status, replica)
}
