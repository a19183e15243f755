package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lmproxy/lmproxy/messages"
)

// nodeRow is what the table shows of one replica of /nodes/status. lmproxy's role_name, health and
// circuit are absent from LMDeploy's proxy: the table still works against it, with "-" there.
type nodeRow struct {
	Role       messages.Role `json:"role"`
	RoleName   string        `json:"role_name"`
	Models     []string      `json:"models"`
	Unfinished int           `json:"unfinished"`
	Latency    []float64     `json:"latency"`
	Health     string        `json:"health"`
	Circuit    string        `json:"circuit"`
}

// printNodesTable writes the /nodes/status answer body as a table sorted by URL.
func printNodesTable(w io.Writer, body []byte) error {
	var nodes map[string]nodeRow
	if err := json.Unmarshal(body, &nodes); err != nil {
		return fmt.Errorf("the answer is not a /nodes/status object: %v", err)
	}
	if len(nodes) == 0 {
		_, err := fmt.Fprintln(w, "no replicas registered")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "URL\tROLE\tMODELS\tHEALTH\tIN-FLIGHT\tLATENCY\tCIRCUIT")
	for _, u := range slices.Sorted(maps.Keys(nodes)) {
		n := nodes[u]
		role := n.RoleName
		if role == "" && n.Role != 0 {
			role = n.Role.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", u, dash(role), dash(strings.Join(n.Models, ",")),
			dash(n.Health), n.Unfinished, meanLatency(n.Latency), dash(n.Circuit))
	}
	return tw.Flush()
}

// meanLatency is the mean of a latency window in seconds, rounded to what a person reads at a glance
// (1.23s, 45.6ms, 789µs); "-" for an empty window.
func meanLatency(window []float64) string {
	if len(window) == 0 {
		return "-"
	}
	var sum float64
	for _, s := range window {
		sum += s
	}
	d := time.Duration(sum / float64(len(window)) * float64(time.Second))
	switch {
	case d >= time.Second:
		d = d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		d = d.Round(100 * time.Microsecond)
	default:
		d = d.Round(time.Microsecond)
	}
	return d.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
