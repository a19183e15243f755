package http

import (
	"log"
	"strings"

	"github.com/sirupsen/logrus"
)

// newStdLogger routes net/http's own error log (TLS handshakes, malformed requests) into logrus.
func newStdLogger(l logrus.FieldLogger) *log.Logger {
	return log.New(logWriter{l}, "", 0)
}

type logWriter struct{ l logrus.FieldLogger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}
