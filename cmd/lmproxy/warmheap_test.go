package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// heapFaultsEnv runs this test binary as a fresh process that prints the page faults its
// request-like garbage cost, after warmHeap ("warm") or without it ("cold").
const heapFaultsEnv = "LMPROXY_TEST_HEAP_FAULTS"

// garbageSink keeps the compiler from proving the garbage's objects unused.
var garbageSink []byte

// reportHeapFaults is the fresh process: it makes 3 MB of short-lived 1 KiB objects, as a few
// thousand requests do, and prints the minor page faults that took.
func reportHeapFaults(mode string) int {
	if mode == "warm" {
		warmHeap()
	}
	before := minorFaults()
	for range 3 << 20 / 1024 {
		b := make([]byte, 1024)
		b[0] = 1
		garbageSink = b
	}
	fmt.Println(minorFaults() - before)
	return 0
}

// minorFaults is this process's minor page faults so far (/proc/self/stat's tenth field).
func minorFaults() int {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return -1
	}
	// The command name, the second field, is in parentheses and may hold spaces.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	n, _ := strconv.Atoi(fields[7])
	return n
}

func heapFaults(t *testing.T, mode string) int {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), heapFaultsEnv+"="+mode)
	out, err := cmd.Output()
	require.NoError(t, err)
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	require.NoError(t, err, "child printed %q", out)
	require.GreaterOrEqual(t, n, 0, "no /proc/self/stat")
	return n
}

func TestWarmHeapMapsThePagesRequestsUse(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("page faults are read from /proc")
	}
	cold, warm := heapFaults(t, "cold"), heapFaults(t, "warm")
	t.Logf("page faults for 3 MB of garbage: %d cold, %d after warmHeap", cold, warm)
	// 3 MB of fresh heap is about 750 pages; the warmed heap has them mapped already.
	require.Greater(t, cold, 500, "a fresh heap should fault its pages in")
	require.Less(t, warm, cold/4)
}
