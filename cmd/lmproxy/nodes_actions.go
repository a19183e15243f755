package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/lmproxy/lmproxy/messages"
)

// nodesActions are the verbs of `lmproxy nodes`, in the order --help lists them.
var nodesActions = []nodesAction{
	{
		name:    "status",
		summary: "list the registered replicas: role, models, health, in-flight, latency, circuit",
		about: "Prints the replicas registered with the proxy (GET /nodes/status), sorted by URL: role, models,\n" +
			"health, requests in flight, mean latency of the last requests and circuit breaker state.",
		flags: func(o *nodesOptions, s *flagSet) {
			s.add(boolValue{&o.includeDown}, "include-down", "", "list the evicted replicas that are still probed too")
		},
		run: nodesStatusAction,
	},
	{
		name:    "add",
		summary: "register a replica (the proxy probes its /v1/models first)",
		about: "Registers the replica whose URL is the argument: lmproxy nodes add http://host:23333 [flags]\n" +
			"(POST /nodes/add with LMDeploy's body). The proxy probes URL/v1/models first; without --model\n" +
			"the replica is registered with every model the probe lists. Adding a URL again replaces it.",
		url: true,
		flags: func(o *nodesOptions, s *flagSet) {
			s.add(&listValue{p: &o.models}, "model", "NAMES", "models the replica serves; comma-separated, may be repeated")
			s.add(enumValue{p: &o.role, choices: []string{"Hybrid", "Prefill", "Decode"},
				aliases: map[string]string{"1": "Hybrid", "2": "Prefill", "3": "Decode"}},
				"role", "ROLE", "Hybrid, Prefill or Decode (or LMDeploy's 1, 2, 3)")
			s.add(floatValue{&o.speed}, "speed", "N", "the replica's relative speed, for routing; 0 declares none")
		},
		run: nodesAddAction,
	},
	{
		name:    "remove",
		summary: "unregister a replica; it keeps running",
		about: "Removes the replica whose URL is the argument from the proxy (POST /nodes/remove):\n" +
			"lmproxy nodes remove http://host:23333. The replica keeps running.",
		url: true,
		run: nodesPostURLAction("/nodes/remove"),
	},
	{
		name:    "terminate",
		summary: "shut a replica down (its GET /terminate) and unregister it",
		about: "Asks the replica whose URL is the argument to shut down, then removes it from the proxy\n" +
			"(POST /nodes/terminate): lmproxy nodes terminate http://host:23333. A replica that refuses\n" +
			"(LMDeploy's api_server needs --allow-terminate-by-client) stays registered.",
		url: true,
		run: nodesPostURLAction("/nodes/terminate"),
	},
}

// nodesStatusAction prints GET /nodes/status as a table, or as it is with --json.
func nodesStatusAction(ctx context.Context, c *adminClient, o *nodesOptions, stdout io.Writer) error {
	path := "/nodes/status"
	if o.includeDown {
		path += "?include=down"
	}
	body, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	if o.json {
		return printRaw(stdout, body)
	}
	return printNodesTable(stdout, body)
}

// addBody is LMDeploy's /nodes/add body: what its api_server sends with --proxy-url.
type addBody struct {
	URL    string    `json:"url"`
	Status addStatus `json:"status"`
}

type addStatus struct {
	Models []string      `json:"models,omitempty"` // none: the proxy takes the probe's list
	Role   messages.Role `json:"role"`
	Speed  *float64      `json:"speed,omitempty"`
}

// nodesAddAction posts the replica's registration.
func nodesAddAction(ctx context.Context, c *adminClient, o *nodesOptions, stdout io.Writer) error {
	// The --role flag accepted only the names ParseRole knows.
	role, _ := messages.ParseRole(o.role)
	b := addBody{URL: o.url, Status: addStatus{Models: o.models, Role: role}}
	if o.speed > 0 {
		b.Status.Speed = &o.speed
	}
	body, err := c.do(ctx, http.MethodPost, "/nodes/add", b)
	if err != nil {
		return err
	}
	return printResult(stdout, o, body)
}

// nodesPostURLAction is remove and terminate: {"url": ...} posted to path.
func nodesPostURLAction(path string) func(context.Context, *adminClient, *nodesOptions, io.Writer) error {
	return func(ctx context.Context, c *adminClient, o *nodesOptions, stdout io.Writer) error {
		body, err := c.do(ctx, http.MethodPost, path, map[string]string{"url": o.url})
		if err != nil {
			return err
		}
		return printResult(stdout, o, body)
	}
}

// printResult shows the proxy's answer to a change: its message ("Added successfully", a JSON
// string) and the replica, or the JSON as it is with --json.
func printResult(w io.Writer, o *nodesOptions, body []byte) error {
	if o.json {
		return printRaw(w, body)
	}
	var msg string
	if json.Unmarshal(body, &msg) != nil {
		msg = oneLine(string(body))
	}
	_, err := fmt.Fprintf(w, "%s: %s\n", msg, o.url)
	return err
}

// printRaw writes the proxy's JSON unchanged, ended by one newline.
func printRaw(w io.Writer, body []byte) error {
	_, err := fmt.Fprintf(w, "%s\n", strings.TrimRight(string(body), "\n"))
	return err
}
