package actors

import (
	"fmt"
	"runtime/debug"

	"github.com/anthdm/hollywood/actor"
	"github.com/sirupsen/logrus"
)

// recoverMiddleware keeps an actor and its state alive through a panic in Receive: the message that
// panicked is dropped and logged. Without it hollywood restarts the actor, and past MaxRestarts
// (a lifetime budget) v1.0.5 crashes the whole process.
func recoverMiddleware(log logrus.FieldLogger) actor.MiddlewareFunc {
	return func(next actor.ReceiveFunc) actor.ReceiveFunc {
		return func(c *actor.Context) {
			defer func() {
				if v := recover(); v != nil {
					log.WithFields(logrus.Fields{
						"actor":   c.PID().String(),
						"message": fmt.Sprintf("%T", c.Message()),
						"stack":   string(debug.Stack()),
					}).Errorf("actor panicked: %v", v)
				}
			}()
			next(c)
		}
	}
}

// restartOpts let hollywood restart a panicking actor without ever reaching the MaxRestarts crash,
// and without its 500 ms default sleep on the actor's goroutine.
func restartOpts() []actor.OptFunc {
	return []actor.OptFunc{actor.WithMaxRestarts(1 << 30), actor.WithRestartDelay(0)}
}
