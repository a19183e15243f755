package main

import (
	"context"
	"io"
	"log"
	"log/slog"
	"maps"

	"github.com/sirupsen/logrus"
)

// logLevels maps --log-level's words (LMDeploy's, Python's logging names) to logrus levels.
var logLevels = map[string]logrus.Level{
	"DEBUG":   logrus.DebugLevel,
	"INFO":    logrus.InfoLevel,
	"WARNING": logrus.WarnLevel,
	"ERROR":   logrus.ErrorLevel,
}

// levelAliases are the other words of `lmdeploy serve proxy --log-level` (Python's logging names),
// upper case. The proxy logs nothing above ERROR, so CRITICAL and FATAL keep its errors instead of
// silencing it; Python's NOTSET logs everything.
var levelAliases = map[string]string{"WARN": "WARNING", "CRITICAL": "ERROR", "FATAL": "ERROR", "NOTSET": "DEBUG"}

// logOptions are --log-level and --log-format, shared by the commands that log.
type logOptions struct {
	level, format string
}

func (o *logOptions) register(s *flagSet) {
	o.level, o.format = "INFO", "text"
	s.add(enumValue{p: &o.level, choices: []string{"DEBUG", "INFO", "WARNING", "ERROR"}, aliases: levelAliases},
		"log-level", "LEVEL", "DEBUG, INFO, WARNING or ERROR, in any case; LMDeploy's WARN (= WARNING),\n"+
			"CRITICAL and FATAL (= ERROR) and NOTSET (= DEBUG) too")
	s.add(enumValue{p: &o.format, choices: []string{"text", "json"}},
		"log-format", "FORMAT", "text (key=value) or json (one object a line)")
}

// logger builds the logger the options describe, writing to w.
func (o logOptions) logger(w io.Writer) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(w)
	l.SetLevel(logLevels[o.level])
	if o.format == "json" {
		l.SetFormatter(&logrus.JSONFormatter{})
	} else {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	return l
}

// routeSlog sends slog.Default, and the standard log package behind it, through l: hollywood logs
// with slog, and the process should write one format. The returned function puts the previous
// loggers back, for callers that run in-process (tests).
func routeSlog(l *logrus.Logger) (restore func()) {
	prev, out, flags := slog.Default(), log.Writer(), log.Flags()
	slog.SetDefault(slog.New(slogHandler{log: l}))
	return func() {
		slog.SetDefault(prev)
		log.SetOutput(out)
		log.SetFlags(flags)
	}
}

// slogHandler is a slog.Handler that writes to a logrus logger at the matching level.
type slogHandler struct {
	log    *logrus.Logger
	fields logrus.Fields // from WithAttrs
	group  string        // from WithGroup: "a.b." prefixes later keys
}

func (h slogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.log.IsLevelEnabled(logrusLevel(l))
}

func (h slogHandler) Handle(_ context.Context, r slog.Record) error {
	fields := make(logrus.Fields, len(h.fields)+r.NumAttrs())
	maps.Copy(fields, h.fields)
	r.Attrs(func(a slog.Attr) bool {
		h.put(fields, a)
		return true
	})
	h.log.WithFields(fields).WithTime(r.Time).Log(logrusLevel(r.Level), r.Message)
	return nil
}

func (h slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	fields := make(logrus.Fields, len(h.fields)+len(attrs))
	maps.Copy(fields, h.fields)
	for _, a := range attrs {
		h.put(fields, a)
	}
	h.fields = fields
	return h
}

// put adds a to fields under the current group.
func (h slogHandler) put(fields logrus.Fields, a slog.Attr) {
	fields[h.group+a.Key] = a.Value.Resolve().Any()
}

func (h slogHandler) WithGroup(name string) slog.Handler {
	h.group += name + "."
	return h
}

// logrusLevel maps a slog level to the logrus level at or below it.
func logrusLevel(l slog.Level) logrus.Level {
	switch {
	case l < slog.LevelInfo:
		return logrus.DebugLevel
	case l < slog.LevelWarn:
		return logrus.InfoLevel
	case l < slog.LevelError:
		return logrus.WarnLevel
	}
	return logrus.ErrorLevel
}
