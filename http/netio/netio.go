// Package netio holds the socket reads and writes of the proxy's hot path.
//
// Go's own reads and writes tell the scheduler they are entering a system call that may block
// (entersyscall and exitsyscall). On a non-blocking socket they never block, and the bookkeeping
// is not free: since Go 1.26 the first such call after the process went idle wakes the runtime's
// monitor thread, which then polls every 20 µs until all processors are idle again, and a call
// that takes longer than the monitor's tick may have its processor handed to another thread. At
// one request at a time that was more than half the proxy's system calls (see
// docs/performance.md). The functions here make the same calls without the bookkeeping; waiting
// for a socket still goes through Go's netpoller, so deadlines and Close work as usual.
package netio
