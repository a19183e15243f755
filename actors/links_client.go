package actors

import (
	"context"
	"errors"
	"time"

	"github.com/anthdm/hollywood/actor"

	"github.com/lmproxy/lmproxy/messages"
)

// ErrLinksTimeout means the DistServe link manager did not answer within its I/O timeout.
var ErrLinksTimeout = errors.New("the DistServe link manager did not answer in time")

// Links is the handle the HTTP layer uses to talk to the DistServe link manager. As with Registry,
// every call that needs an answer carries its own buffered reply channel.
type Links struct {
	engine *actor.Engine
	pid    *actor.PID
	bg     *background
	limit  time.Duration // the longest wait for an answer: one I/O timeout and the trip through the inboxes
}

// SpawnLinks starts the DistServe link manager with cfg on e. Call Stop once when done.
func SpawnLinks(e *actor.Engine, cfg LinksConfig) *Links {
	c := cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	bg := &background{ctx: ctx, cancel: cancel, timeout: c.IOTimeout}
	st := &linksState{links: map[messages.Pair]*actor.PID{}, shelf: sessions{}, orphans: sessions{}}
	opts := append(restartOpts(), actor.WithMiddleware(recoverMiddleware(c.Log)))
	pid := e.Spawn(func() actor.Receiver { return &linkManager{st: st, cfg: &c, bg: bg} }, "distserve", opts...)
	return &Links{engine: e, pid: pid, bg: bg, limit: c.IOTimeout + askTimeout}
}

// Stop stops the link manager and its links, then cancels their network I/O and waits for it.
func (l *Links) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	<-l.engine.PoisonCtx(ctx, l.pid).Done()
	l.bg.cancel()
	l.bg.wg.Wait()
}

// Ensure returns once the pair's link is connected, or why it could not be: one connect per pair at a
// time, however many requests ask.
func (l *Links) Ensure(ctx context.Context, p messages.Pair) error {
	reply := make(chan error, 1)
	l.engine.Send(l.pid, messages.EnsureLink{Pair: p, Reply: reply})
	err, waitErr := waitUpTo(ctx, reply, l.limit)
	if waitErr != nil {
		return waitErr
	}
	return err
}

// Shelve records that session's KV cache waits on p's Prefill replica until Unshelve.
func (l *Links) Shelve(p messages.Pair, session int64) {
	l.engine.Send(l.pid, messages.Shelve{Pair: p, Session: session})
}

// Reshelve moves a session shelved on from to to, keeping its cache: another Decode replica will pull it.
func (l *Links) Reshelve(from, to messages.Pair, session int64) {
	l.engine.Send(l.pid, messages.Reshelve{From: from, To: to, Session: session})
}

// Unshelve says how the decode answer of a shelved session ended (Unused: its request never went out).
func (l *Links) Unshelve(p messages.Pair, session int64, o messages.Outcome) {
	l.engine.Send(l.pid, messages.Unshelve{Pair: p, Session: session, Outcome: o})
}

// ReplicaLeft drops the links through url; it suits actors.Config.OnLeave (it never blocks).
func (l *Links) ReplicaLeft(url string) {
	l.engine.Send(l.pid, messages.ReplicaLeft{URL: url})
}

// CollectGarbage frees, on their Prefill replicas, the caches of sessions that were migrating when
// their Decode replica left, and forgets them.
func (l *Links) CollectGarbage(ctx context.Context) (messages.GarbageCollected, error) {
	reply := make(chan messages.GarbageCollected, 1)
	l.engine.Send(l.pid, messages.CollectGarbage{Reply: reply})
	return waitUpTo(ctx, reply, l.limit)
}

// waitUpTo receives one answer, giving up when ctx ends or after limit.
func waitUpTo[T any](ctx context.Context, reply <-chan T, limit time.Duration) (T, error) {
	t := time.NewTimer(limit)
	defer t.Stop()
	var zero T
	select {
	case v := <-reply:
		return v, nil
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-t.C:
		return zero, ErrLinksTimeout
	}
}
