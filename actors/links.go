package actors

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/messages"
)

// LinkIO is the network side of DistServe links. Its methods run on goroutines of their own, never
// inside an actor's Receive, and must honour ctx.
type LinkIO interface {
	// Connect runs a pair's whole connection sequence: engine_info, p2p_initialize and p2p_connect on
	// both replicas.
	Connect(ctx context.Context, p messages.Pair) error
	// Drop tells both replicas of a pair to forget each other (p2p_drop_connect).
	Drop(ctx context.Context, p messages.Pair) error
	// FreeCache frees the KV cache kept for one prefill session on its Prefill replica (free_cache).
	FreeCache(ctx context.Context, prefill string, session int64) error
}

// LinksConfig is what the DistServe link actors need.
type LinksConfig struct {
	IO LinkIO // required
	// IOTimeout bounds one connect sequence, one drop, one free and one whole gc sweep; default 60s,
	// since a real engine sets up its RDMA transfer engine inside p2p_initialize.
	IOTimeout time.Duration
	Log       logrus.FieldLogger
}

func (c LinksConfig) withDefaults() LinksConfig {
	if c.IOTimeout <= 0 {
		c.IOTimeout = time.Minute
	}
	if c.Log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		c.Log = l
	}
	return c
}

// background runs the links' network I/O off the actors' goroutines, so that Links.Stop can cancel
// all of it and wait for it to end.
type background struct {
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	timeout time.Duration
}

// spawn runs f on a goroutine that Links.Stop waits for; f must end when ctx ends.
func (b *background) spawn(f func(ctx context.Context)) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f(b.ctx)
	}()
}

// call runs one I/O operation bounded by the I/O timeout and turns a panic in it into an error: it
// runs on a goroutine of its own, where a panic would end the process.
func (b *background) call(ctx context.Context, op func(context.Context) error) (err error) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("DistServe I/O panicked: %v", v)
		}
	}()
	return op(ctx)
}

// sessions is a set of prefill sessions per pair.
type sessions map[messages.Pair]map[int64]bool

// add puts session into p's set.
func (s sessions) add(p messages.Pair, session int64) {
	if s[p] == nil {
		s[p] = map[int64]bool{}
	}
	s[p][session] = true
}

// take removes session from p's set and reports whether it was there.
func (s sessions) take(p messages.Pair, session int64) bool {
	if !s[p][session] {
		return false
	}
	delete(s[p], session)
	if len(s[p]) == 0 {
		delete(s, p)
	}
	return true
}

// linksState is the link manager's memory; it lives in the producer's closure so a restart keeps it.
type linksState struct {
	links   map[messages.Pair]*actor.PID
	shelf   sessions // migrating: the decode answer has not ended
	orphans sessions // migrating when their Decode replica left: what gc frees
	nextID  uint64
}

// linkManager is the actor that owns every link actor (one child per pair) and the shelf of migrating
// sessions. The shelf lives here rather than in the links so that a link's drop and a session's end,
// which both pass through this one inbox, are always seen in the order they happened.
type linkManager struct {
	st  *linksState
	cfg *LinksConfig
	bg  *background
}

// Receive handles the link manager's messages.
func (m *linkManager) Receive(c *actor.Context) {
	switch msg := c.Message().(type) {
	case messages.EnsureLink:
		c.Send(m.link(c, msg.Pair), msg)
	case messages.Shelve:
		m.st.shelf.add(msg.Pair, msg.Session)
	case messages.Reshelve:
		m.reshelve(msg)
	case messages.Unshelve:
		m.unshelve(msg)
	case messages.ReplicaLeft:
		m.replicaLeft(c, msg.URL)
	case messages.CollectGarbage:
		m.collect(msg.Reply)
	}
}

// link returns the actor of pair p, spawning it on first use.
func (m *linkManager) link(c *actor.Context, p messages.Pair) *actor.PID {
	if pid := m.st.links[p]; pid != nil {
		return pid
	}
	m.st.nextID++ // IDs never repeat (hollywood reuses a live actor with the same ID) and hold no URL
	pid := c.SpawnChild(newLink(p, m.cfg, m.bg), "link",
		append(restartOpts(), actor.WithID(strconv.FormatUint(m.st.nextID, 10)),
			actor.WithMiddleware(recoverMiddleware(m.cfg.Log)))...)
	m.st.links[p] = pid
	return pid
}

// reshelve moves a session to the pair of the Decode replica that will pull its cache now. A session
// kept for gc, its first Decode replica having left meanwhile, is shelved again: its cache is wanted.
func (m *linkManager) reshelve(r messages.Reshelve) {
	if m.st.shelf.take(r.From, r.Session) || m.st.orphans.take(r.From, r.Session) {
		m.st.shelf.add(r.To, r.Session)
	}
}

// unshelve ends a session's migration. A cache that its Decode replica may never have pulled is
// freed on the Prefill replica at once; freeing one that was pulled is harmless (LMDeploy only warns
// about an unknown session).
func (m *linkManager) unshelve(u messages.Unshelve) {
	switch {
	case m.st.shelf.take(u.Pair, u.Session):
		// A complete answer means the Decode replica pulled the cache and freed it over its own link
		// to the Prefill replica; after a client left, the Decode replica, still here, may be pulling.
		if u.Outcome == messages.OK || u.Outcome == messages.ClientGone {
			return
		}
	case m.st.orphans.take(u.Pair, u.Session):
		if u.Outcome == messages.OK {
			return
		}
	default:
		return // gc freed it already
	}
	bg, lio, log, pair, session := m.bg, m.cfg.IO, m.cfg.Log, u.Pair, u.Session
	bg.spawn(func(ctx context.Context) {
		if err := bg.call(ctx, func(ctx context.Context) error { return lio.FreeCache(ctx, pair.Prefill, session) }); err != nil {
			log.WithFields(logrus.Fields{"prefill": pair.Prefill, "session": session}).WithError(err).
				Warn("cannot free the KV cache of a migration that did not complete")
		}
	})
}

// replicaLeft drops every link through url. The sessions still migrating to url, if it was a Decode
// replica, are kept for gc: it may never pull their caches.
func (m *linkManager) replicaLeft(c *actor.Context, url string) {
	for p, pid := range m.st.links {
		if p.Prefill != url && p.Decode != url {
			continue
		}
		c.Send(pid, dropLink{})
		stopChild(c, pid)
		delete(m.st.links, p)
		m.cfg.Log.WithField("link", p.String()).Info("DistServe link dropped: a replica left")
	}
	for p, set := range m.st.shelf {
		if p.Decode != url {
			continue
		}
		for session := range set {
			m.st.orphans.add(p, session)
		}
		delete(m.st.shelf, p)
	}
}

// orphan is one session for gc to free.
type orphan struct {
	prefill string
	session int64
}

// collect hands every orphan to one sweep that frees them on their Prefill replicas, and forgets them
// at once so that a second gc never frees one twice.
func (m *linkManager) collect(reply chan<- messages.GarbageCollected) {
	var todo []orphan
	for p, set := range m.st.orphans {
		for session := range set {
			todo = append(todo, orphan{p.Prefill, session})
		}
	}
	clear(m.st.orphans)
	slices.SortFunc(todo, func(a, b orphan) int {
		return cmp.Or(cmp.Compare(a.prefill, b.prefill), cmp.Compare(a.session, b.session))
	})
	bg, lio := m.bg, m.cfg.IO
	bg.spawn(func(ctx context.Context) {
		var res messages.GarbageCollected
		// One timeout for the whole sweep: the caller waits for its answer.
		err := bg.call(ctx, func(ctx context.Context) error {
			for _, o := range todo {
				if err := lio.FreeCache(ctx, o.prefill, o.session); err != nil {
					res.Failed = append(res.Failed, fmt.Sprintf("%s session %d: %v", o.prefill, o.session, err))
				} else {
					res.Freed++
				}
			}
			return nil
		})
		if err != nil {
			res.Failed = append(res.Failed, err.Error())
		}
		reply <- res
	})
}

// stopChild stops one child actor and waits for it, once: poisoning a PID twice, or a parent
// poisoning a child that is still stopping, hangs in hollywood v1.0.5.
func stopChild(c *actor.Context, pid *actor.PID) {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	<-c.Engine().PoisonCtx(ctx, pid).Done()
}
