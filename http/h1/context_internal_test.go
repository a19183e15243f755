package h1

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRequestContextRegistrationRace: registrations, stops and the cancellation racing each other
// leave every function either stopped (its stop said true) or run once, never both, never neither.
func TestRequestContextRegistrationRace(t *testing.T) {
	for range 200 {
		ctx := newRequestContext()
		const n = 8
		var ran [n]atomic.Int32
		stopped := make([]bool, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stop := ctx.AfterFunc(func() { ran[i].Add(1) })
				if i%2 == 0 {
					stopped[i] = stop()
				}
			}()
		}
		wg.Add(1)
		go func() { defer wg.Done(); ctx.cancel() }()
		wg.Wait()
		for i := range n {
			want := int32(1)
			if stopped[i] {
				want = 0
			}
			deadline := time.Now().Add(5 * time.Second)
			for ran[i].Load() != want && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if got := ran[i].Load(); got != want {
				t.Fatalf("function %d: stopped %v, ran %d times", i, stopped[i], got)
			}
		}
		if ctx.Err() != context.Canceled {
			t.Fatalf("Err %v", ctx.Err())
		}
		select {
		case <-ctx.Done():
		default:
			t.Fatal("Done not closed after cancel")
		}
	}
}
