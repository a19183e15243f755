package actors

import (
	"context"
	"fmt"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"
)

// SpawnEventMonitor subscribes an actor to e's event stream that logs actor restarts and dead letters
// and reports each to count ("restart", "dead_letter"; count may be nil). Call the returned stop
// once: it unsubscribes before stopping, because a subscriber that stops while subscribed makes
// hollywood v1.0.5 loop on dead letters forever.
func SpawnEventMonitor(e *actor.Engine, log logrus.FieldLogger, count func(event string)) (stop func()) {
	if count == nil {
		count = func(string) {}
	}
	if log == nil {
		log = Config{}.withDefaults().Log
	}
	pid := e.SpawnFunc(func(c *actor.Context) {
		switch ev := c.Message().(type) {
		case actor.ActorRestartedEvent:
			count("restart")
			log.WithFields(logrus.Fields{"actor": ev.PID.String(), "restarts": ev.Restarts}).
				Warnf("actor restarted after a panic: %v", ev.Reason)
		case actor.DeadLetterEvent:
			count("dead_letter")
			log.WithFields(logrus.Fields{"target": ev.Target.String(), "message": fmt.Sprintf("%T", ev.Message)}).
				Debug("message to a stopped actor dropped")
		}
	}, "events", restartOpts()...)
	e.Subscribe(pid)
	return func() {
		e.Unsubscribe(pid)
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		<-e.PoisonCtx(ctx, pid).Done()
	}
}
