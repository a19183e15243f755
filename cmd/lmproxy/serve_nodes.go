package main

import (
	"context"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	lmhttp "github.com/lmproxy/lmproxy/http"
)

// Attempts to register a --nodes replica start quickly (a replica started together with the proxy
// is usually up within a second) and then settle at every few seconds.
const (
	firstNodesRetry = 500 * time.Millisecond
	maxNodesRetry   = 5 * time.Second
)

// registerNodes registers each of urls as POST /nodes/add would, each in a goroutine that retries
// until it works or ctx ends, so a replica that starts after the proxy is still picked up. The
// returned function waits for the goroutines once ctx has ended.
func registerNodes(ctx context.Context, srv *lmhttp.Server, urls []string, log logrus.FieldLogger) (wait func()) {
	var wg sync.WaitGroup
	for _, u := range urls {
		wg.Go(func() { registerNode(ctx, srv, u, log.WithField("replica", u)) })
	}
	return wg.Wait
}

// registerNode adds one replica, retrying with backoff. The first failure is a warning; later ones
// are debug lines, so a replica that stays away does not flood the log.
func registerNode(ctx context.Context, srv *lmhttp.Server, url string, log logrus.FieldLogger) {
	delay := firstNodesRetry
	for attempt := 1; ; attempt++ {
		err := srv.AddReplica(ctx, url)
		switch {
		case err == nil:
			if attempt > 1 {
				log.WithField("attempts", attempt).Info("replica from --nodes registered")
			}
			return
		case ctx.Err() != nil:
			return
		case attempt == 1:
			log.WithError(err).Warn("cannot register replica from --nodes yet: retrying in the background")
		default:
			log.WithError(err).Debug("replica from --nodes still cannot be registered")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, maxNodesRetry)
	}
}
