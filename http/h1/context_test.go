package h1_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/lmproxy/lmproxy/http/h1"
)

// afterFuncer is the method of a request's context that the proxy registers its replica exchanges
// with, and that context.WithCancel and WithTimeout use for contexts derived from it.
type afterFuncer interface {
	AfterFunc(func()) (stop func() bool)
}

// TestRequestContextAfterFunc: a request's context runs what was registered with its AfterFunc
// when the client hangs up, not what was stopped; contexts derived from it are cancelled with it
// and cost no goroutine each (context starts one per derived context when the parent has no
// AfterFunc); a registration after the end runs at once.
func TestRequestContextAfterFunc(t *testing.T) {
	needWatcher(t)
	wh := newWaitingHandler(t)
	ts := startH1(t, &h1.Server{Handler: wh})
	rc := dialRaw(t, ts.addr)
	rc.write("GET /wait HTTP/1.1\r\nHost: h\r\n\r\n")
	ctx := waitFor(t, wh.started, "the handler")
	a, ok := ctx.(afterFuncer)
	if !ok {
		t.Fatalf("a request's context (%T) has no AfterFunc", ctx)
	}

	ran, stopped := make(chan struct{}), make(chan struct{}, 1)
	stopRan := a.AfterFunc(func() { close(ran) })
	stopStopped := a.AfterFunc(func() { stopped <- struct{}{} })
	if !stopStopped() {
		t.Fatal("stop of a registered function reported it had run")
	}
	if stopStopped() {
		t.Fatal("a second stop reported that it stopped something")
	}
	viaContext := make(chan struct{})
	context.AfterFunc(ctx, func() { close(viaContext) })

	before := runtime.NumGoroutine()
	var derived []context.Context
	for range 20 {
		c, cancel := context.WithCancel(ctx)
		defer cancel()
		d, cancelD := context.WithTimeout(ctx, time.Hour)
		defer cancelD()
		derived = append(derived, c, d)
	}
	if n := runtime.NumGoroutine() - before; n >= 20 {
		t.Fatalf("40 contexts derived from a request's started %d goroutines", n)
	}

	at := time.Now()
	rc.nc.Close()
	wh.expectCancelled(t, at)
	waitFor(t, ran, "the registered function")
	waitFor(t, viaContext, "context.AfterFunc's function")
	for i, d := range derived {
		select {
		case <-d.Done():
			if !errors.Is(d.Err(), context.Canceled) {
				t.Fatalf("derived context %d: %v", i, d.Err())
			}
		case <-time.After(waitLimit):
			t.Fatalf("derived context %d not cancelled with the request's", i)
		}
	}
	if stopRan() {
		t.Fatal("stop after the function ran reported that it stopped it")
	}
	select {
	case <-stopped:
		t.Fatal("a stopped function ran")
	default:
	}
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatalf("Err after the hang-up: %v", ctx.Err())
	}
	late := make(chan struct{})
	if a.AfterFunc(func() { close(late) })() {
		t.Fatal("stop of a function registered after the end reported that it stopped it")
	}
	waitFor(t, late, "a function registered after the end")
}
