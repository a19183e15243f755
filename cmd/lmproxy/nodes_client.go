package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// adminClient sends the requests of `lmproxy nodes` to a proxy and words every failure as one line.
type adminClient struct {
	base    string // the proxy's base URL, without a trailing slash
	key     string
	timeout time.Duration
	http    *http.Client
}

func newAdminClient(o *nodesOptions) *adminClient {
	// A transport of its own, closed by close: the command may run in-process (tests) and must not
	// leave idle connections behind in the shared default transport.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &adminClient{
		base:    strings.TrimRight(o.proxy, "/"),
		key:     o.adminKey,
		timeout: o.timeout,
		http:    &http.Client{Transport: tr, Timeout: o.timeout},
	}
}

func (c *adminClient) close() { c.http.CloseIdleConnections() }

// do sends one request, v marshalled as its JSON body unless nil, and returns the body of a 2xx
// answer. Any other answer, or none, is an error worded for the user.
func (c *adminClient) do(ctx context.Context, method, path string, v any) ([]byte, error) {
	var body io.Reader
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("invalid --proxy %s: %v", c.base, err)
	}
	if v != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, c.statusError(resp.StatusCode, b)
	}
	return b, nil
}

// transportError words a request that got no (whole) answer.
func (c *adminClient) transportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Errorf("no answer from the proxy at %s within %v (--timeout)", c.base, c.timeout)
		}
		err = ue.Err // its message repeats the method and URL
	}
	return fmt.Errorf("cannot reach the proxy at %s: %v", c.base, err)
}

// statusError words a non-2xx answer with the proxy's own message.
func (c *adminClient) statusError(code int, body []byte) error {
	hint := ""
	if code == http.StatusUnauthorized || code == http.StatusForbidden {
		hint = " (the proxy runs with --admin-keys: give one with --admin-key or $LMPROXY_ADMIN_KEY)"
		if c.key != "" {
			hint = " (check --admin-key or $LMPROXY_ADMIN_KEY against the proxy's --admin-keys)"
		}
	}
	return fmt.Errorf("the proxy at %s answered HTTP %d: %s%s", c.base, code, errorDetail(code, body), hint)
}

// errorDetail finds the message of an error answer: {"detail": ...} of the admin API (a string from
// lmproxy and LMDeploy, a list from FastAPI's validation), the OpenAI error body, or else the text.
func errorDetail(code int, body []byte) string {
	var e struct {
		Detail json.RawMessage `json:"detail"`
		Error  struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil {
		var s string
		switch {
		case json.Unmarshal(e.Detail, &s) == nil && s != "":
			return oneLine(s)
		case len(e.Detail) > 0 && string(e.Detail) != "null":
			return oneLine(string(e.Detail))
		case e.Error.Message != "":
			return oneLine(e.Error.Message)
		}
	}
	if s := oneLine(string(body)); s != "" {
		return s
	}
	return http.StatusText(code)
}

// oneLine folds s onto one line of at most 300 characters: error output is one line.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 300 {
		s = string(r[:300]) + "…"
	}
	return s
}
