package metrics

import (
	"context"

	"github.com/lmproxy/lmproxy/actors"
	"github.com/lmproxy/lmproxy/messages"
)

// CountProbes wraps a health probe so each result is counted.
func (m *Metrics) CountProbes(probe actors.ProbeFunc) actors.ProbeFunc {
	if m == nil {
		return probe
	}
	return func(ctx context.Context, url string) (messages.Health, error) {
		h, err := probe(ctx, url)
		result := string(h)
		if err != nil {
			result = "failure"
		}
		m.Probe(url, result)
		return h, err
	}
}
