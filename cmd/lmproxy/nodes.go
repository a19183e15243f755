package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

func init() {
	register(command{name: "nodes", summary: "list, add, remove or terminate the replicas of a running proxy", run: runNodes})
}

// nodesAction is one verb of `lmproxy nodes`.
type nodesAction struct {
	name    string
	summary string // one line for `lmproxy nodes --help`
	about   string // what `lmproxy nodes <name> --help` says under the usage line
	url     bool   // takes the replica's URL as its one argument
	// flags adds the action's own flags to those every action has; nil when it has none.
	flags func(o *nodesOptions, s *flagSet)
	// run sends the action's request and prints the answer; its error is the one line on stderr.
	run func(ctx context.Context, c *adminClient, o *nodesOptions, stdout io.Writer) error
}

// nodesOptions are the flags and the argument of every action; each action reads those it has.
type nodesOptions struct {
	proxy       string
	adminKey    string
	timeout     time.Duration
	json        bool
	includeDown bool
	models      []string
	role        string
	speed       float64
	url         string // the replica's, for add, remove and terminate
}

// newNodesOptions returns the defaults and the flag set of action a.
func newNodesOptions(a nodesAction) (*nodesOptions, *flagSet) {
	o := &nodesOptions{proxy: "http://127.0.0.1:8000", timeout: 10 * time.Second, role: "Hybrid"}
	s := newFlagSet("lmproxy nodes "+a.name, a.about)
	if a.flags != nil {
		a.flags(o, s)
	}
	s.add(stringValue{p: &o.proxy, check: checkURL}, "proxy", "URL", "the proxy's base URL")
	s.add(stringValue{p: &o.adminKey}, "admin-key", "KEY", "one of the proxy's --admin-keys, sent as Authorization: Bearer <key>")
	s.add(durationValue{&o.timeout, true}, "timeout", "DURATION", "time for the whole request, answer included")
	s.add(boolValue{&o.json}, "json", "", "print the proxy's JSON answer as it is")
	return o, s
}

// runNodes is `lmproxy nodes <action>`: one request to the proxy's admin API. It exits 0 when the
// proxy agreed, 1 with one line on stderr when it did not or could not be reached, 2 on bad usage.
func runNodes(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		nodesUsage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help":
		nodesUsage(stdout)
		return 0
	}
	a, ok := findNodesAction(args[0])
	if !ok {
		fmt.Fprintf(stderr, "lmproxy nodes: unknown action %q (want %s; see lmproxy nodes --help)\n",
			args[0], strings.Join(nodesActionNames(), ", "))
		return 2
	}
	o, s := newNodesOptions(a)
	positional, flags := splitPositional(s, args[1:])
	// Flags first, so that `lmproxy nodes add --help` works without a URL.
	if err := s.parse(flags); err != nil {
		return s.exit(err, stdout, stderr)
	}
	if err := o.takeArgs(a, positional); err != nil {
		return s.exit(err, stdout, stderr)
	}
	c := newAdminClient(o)
	defer c.close()
	if err := a.run(ctx, c, o, stdout); err != nil {
		fmt.Fprintf(stderr, "lmproxy nodes %s: %v\n", a.name, err)
		return 1
	}
	return 0
}

// takeArgs checks the positional arguments: the replica's URL for the actions that take one, nothing
// otherwise.
func (o *nodesOptions) takeArgs(a nodesAction, args []string) error {
	switch {
	case !a.url && len(args) > 0:
		return fmt.Errorf("unexpected argument %q (flags start with --)", args[0])
	case a.url && len(args) == 0:
		return fmt.Errorf("missing the replica's URL: lmproxy nodes %s http://host:port", a.name)
	case a.url && len(args) > 1:
		return fmt.Errorf("unexpected argument %q: give one replica URL", args[1])
	case a.url:
		if err := checkReplicaURL(args[0]); err != nil {
			return errors.New("replica URL: " + err.Error())
		}
		o.url = args[0]
	}
	return nil
}

// splitPositional separates the arguments that are neither flags nor flag values, so the replica's
// URL may come before or after the flags: the flag package alone stops at the first of them. "--"
// ends the flags.
func splitPositional(s *flagSet, args []string) (positional, flags []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(positional, args[i+1:]...), flags
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			positional = append(positional, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") || i+1 == len(args) {
			continue
		}
		if f := s.fs.Lookup(name); f != nil {
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
				i++
				flags = append(flags, args[i])
			}
		}
	}
	return positional, flags
}

// nodesUsage lists the actions.
func nodesUsage(w io.Writer) {
	fmt.Fprint(w, "Usage: lmproxy nodes <action> [URL] [flags]\n\n"+
		"An admin client of a running proxy's /nodes/* API. Every action takes --proxy (default\n"+
		"http://127.0.0.1:8000, env LMPROXY_PROXY), --admin-key (env LMPROXY_ADMIN_KEY), --timeout and --json.\n"+
		"Exits 0 when the proxy agreed, 1 when it refused or could not be reached, 2 on bad usage.\n\nActions:\n")
	for _, a := range nodesActions {
		name := a.name
		if a.url {
			name += " URL"
		}
		fmt.Fprintf(w, "  %-15s %s\n", name, a.summary)
	}
	fmt.Fprint(w, "\nRun `lmproxy nodes <action> --help` for its flags.\n")
}

func findNodesAction(name string) (nodesAction, bool) {
	for _, a := range nodesActions {
		if a.name == name {
			return a, true
		}
	}
	return nodesAction{}, false
}

func nodesActionNames() []string {
	names := make([]string, len(nodesActions))
	for i, a := range nodesActions {
		names[i] = a.name
	}
	return names
}
