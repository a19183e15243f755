// Package goroutines lets tests see where goroutines wait, to act once one is parked instead of
// sleeping and hoping it is.
package goroutines

import (
	"runtime"
	"strings"
)

// WaitingForIO reports whether some goroutine waits in the netpoller (for a socket to become
// readable or writable) with every one of frames (function names, or parts of them) on its stack.
func WaitingForIO(frames ...string) bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "[IO wait") && containsAll(g, frames) {
			return true
		}
	}
	return false
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
