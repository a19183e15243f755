package main

import "runtime"

// firstHeapGoal is the Go collector's first heap goal at the default GOGC: a fresh process grows
// its heap to this size before it collects, and reuses those pages from then on.
const firstHeapGoal = 4 << 20

// warmHeap has the kernel map the heap's first pages before the proxy takes requests, as nginx
// fills its connection tables when a worker starts. Each page of a fresh heap costs a page fault
// the first time it is written, and on virtual machines whose host backs every new page a fault
// costs 10–40 µs instead of about 1 (docs/performance.md, tenth round): without this the proxy's
// first few thousand requests after each start ran 20–30 µs slower at one request at a time. The
// cost is ~15 ms at start and the 4 MB of resident memory the heap reaches in its first thousand
// requests anyway. The objects are small ones, as the requests' are, so that the collector's
// bookkeeping for small spans is mapped too; they are garbage when it returns, and the collection
// that frees them keeps their pages for the heap.
func warmHeap() {
	const objectSize = 1 << 10
	objects := make([][]byte, firstHeapGoal/objectSize)
	for i := range objects {
		b := make([]byte, objectSize)
		b[0] = 1 // a fresh span is known to be zero: nothing but this write maps its page
		objects[i] = b
	}
	runtime.KeepAlive(objects)
	runtime.GC()
}
