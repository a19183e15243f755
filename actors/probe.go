package actors

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/lmproxy/lmproxy/messages"
)

// ProbeFunc checks one replica's health once. It returns the serving state (healthy, sleeping or
// initializing) or an error for anything that counts as a failure. It must honour ctx.
type ProbeFunc func(ctx context.Context, url string) (messages.Health, error)

// maxProbeBody bounds what a probe reads of a /health answer.
const maxProbeBody = 64 << 10

// HTTPProbe probes GET <url>/health with client. The JSON "status" field decides whatever the HTTP
// status is, because LMDeploy answers 503 for "initializing" and "unhealthy"; a 200 without a known
// status counts as healthy (older servers answer 200 with no body).
func HTTPProbe(client *http.Client) ProbeFunc {
	return func(ctx context.Context, url string) (messages.Health, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(url, "/")+"/health", nil)
		if err != nil {
			return "", err
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxProbeBody))
		if err != nil {
			return "", err
		}
		return classifyHealth(resp.StatusCode, body)
	}
}

// classifyHealth maps one /health answer to a serving state or a failure (SPEC §5).
func classifyHealth(status int, body []byte) (messages.Health, error) {
	var doc struct {
		Status *string `json:"status"`
	}
	if json.Unmarshal(body, &doc) == nil && doc.Status != nil {
		switch h := messages.Health(strings.ToLower(*doc.Status)); h {
		case messages.HealthHealthy, messages.HealthSleeping, messages.HealthInitializing:
			return h, nil
		default:
			return "", fmt.Errorf("replica reports status %q (HTTP %d)", *doc.Status, status)
		}
	}
	if status == http.StatusOK {
		return messages.HealthHealthy, nil
	}
	return "", fmt.Errorf("health answered HTTP %d without a known status", status)
}
