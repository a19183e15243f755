package actors

import (
	"context"
	"errors"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"

	"github.com/lmproxy/lmproxy/messages"
)

// errLinkDropped answers the requests still waiting for a link that was dropped or stopped.
var errLinkDropped = errors.New("the DistServe link was dropped: one of its replicas left")

// linkState is where a link is in its connection state machine.
type linkState int

// The states of a link.
const (
	disconnected linkState = iota // never connected, or the last connect failed: the next request connects
	connecting                    // one connect sequence runs; every other request waits for it
	connected                     // migrations may use the link
)

// connectDone carries the end of a link's connect sequence back into the link actor.
type connectDone struct{ err error }

// dropLink tells a link that one of its replicas left, just before the link is stopped.
type dropLink struct{}

// link is the actor of one Prefill→Decode pair. It owns the pair's connection state machine: the
// first request connects, requests that arrive meanwhile wait for that one connect, and a failed
// connect leaves the link disconnected so that the next request tries again.
type link struct {
	pair    messages.Pair
	cfg     *LinksConfig
	bg      *background
	state   linkState
	waiters []chan<- error
	ctx     context.Context // ends when the link stops, cancelling a connect in flight
	cancel  context.CancelFunc
}

// newLink returns the producer of the link actor of p.
func newLink(p messages.Pair, cfg *LinksConfig, bg *background) actor.Producer {
	return func() actor.Receiver { return &link{pair: p, cfg: cfg, bg: bg} }
}

// Receive handles the link's messages.
func (l *link) Receive(c *actor.Context) {
	switch m := c.Message().(type) {
	case actor.Started:
		l.ctx, l.cancel = context.WithCancel(l.bg.ctx)
	case actor.Stopped:
		if l.cancel != nil {
			l.cancel()
		}
		l.answer(errLinkDropped)
	case messages.EnsureLink:
		l.ensure(c, m.Reply)
	case connectDone:
		l.connected(m.err)
	case dropLink:
		l.drop()
	}
}

// ensure answers at once on a connected link; otherwise the request waits for the connect in flight,
// starting one if none runs.
func (l *link) ensure(c *actor.Context, reply chan<- error) {
	switch l.state {
	case connected:
		reply <- nil
	case connecting:
		l.waiters = append(l.waiters, reply)
		l.cfg.Log.WithField("link", l.pair.String()).Debug("request waits for the DistServe link's connect in flight")
	case disconnected:
		l.state, l.waiters = connecting, append(l.waiters, reply)
		bg, lio, ctx, pair, e, self := l.bg, l.cfg.IO, l.ctx, l.pair, c.Engine(), c.PID()
		l.cfg.Log.WithField("link", pair.String()).Debug("DistServe link connecting")
		bg.spawn(func(context.Context) {
			err := bg.call(ctx, func(ctx context.Context) error { return lio.Connect(ctx, pair) })
			e.Send(self, connectDone{err})
		})
	}
}

// connected ends a connect sequence and answers everyone who waited for it.
func (l *link) connected(err error) {
	log := l.cfg.Log.WithField("link", l.pair.String())
	if err != nil {
		l.state = disconnected
		log.WithError(err).Warn("DistServe link failed to connect; the next request retries")
	} else {
		l.state = connected
		log.Info("DistServe link connected")
	}
	l.answer(err)
}

// answer sends err to every waiter; their channels are buffered, so this never blocks.
func (l *link) answer(err error) {
	for _, w := range l.waiters {
		w <- err
	}
	l.waiters = nil
}

// drop tells both replicas of a link that was (being) connected to forget each other, best effort:
// one of them has just left and may not answer.
func (l *link) drop() {
	if l.state == disconnected {
		return
	}
	l.state = disconnected
	bg, lio, log, pair := l.bg, l.cfg.IO, l.cfg.Log, l.pair
	bg.spawn(func(ctx context.Context) {
		if err := bg.call(ctx, func(ctx context.Context) error { return lio.Drop(ctx, pair) }); err != nil {
			log.WithFields(logrus.Fields{"link": pair.String()}).WithError(err).Debug("DistServe drop_connect failed")
		}
	})
}
