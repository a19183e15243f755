// Command lmproxy is an OpenAI-compatible request distributor for LLM inference servers, a drop-in
// replacement for LMDeploy's `lmdeploy serve proxy`. Run `lmproxy --help` for its subcommands.
package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// command is one subcommand. Each lives in its own file and registers itself from init, so adding
// one never touches this file.
type command struct {
	name    string
	summary string // one line for the usage listing
	// run executes the subcommand with the arguments after its name and returns the exit status. It
	// stops when ctx ends, which is how main delivers SIGINT/SIGTERM and how tests stop it.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

var commands = map[string]command{}

// register adds a subcommand; call it from init.
func register(c command) { commands[c.name] = c }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// Once the first signal arrived, give the signals back to the runtime: a second Ctrl-C then ends
	// the process at once instead of waiting for a graceful shutdown.
	context.AfterFunc(ctx, stop)
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches args to a subcommand and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "lmproxy: unknown command %q (want %s; see lmproxy --help)\n",
			args[0], strings.Join(slices.Sorted(maps.Keys(commands)), ", "))
		return 2
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

// usage lists the subcommands.
func usage(w io.Writer) {
	fmt.Fprint(w, "Usage: lmproxy <command> [flags]\n\n"+
		"An OpenAI-compatible request distributor for LLM inference servers,\n"+
		"a drop-in replacement for `lmdeploy serve proxy`.\n\nCommands:\n")
	for _, name := range slices.Sorted(maps.Keys(commands)) {
		fmt.Fprintf(w, "  %-10s %s\n", name, commands[name].summary)
	}
	fmt.Fprint(w, "\nRun `lmproxy <command> --help` for its flags.\n")
}
