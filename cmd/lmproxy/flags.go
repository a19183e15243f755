package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lmproxy/lmproxy/messages"
)

// envPrefix starts the environment variable of every flag: --max-body is read from
// $LMPROXY_MAX_BODY when the command line leaves it out (SPEC §3).
const envPrefix = "LMPROXY_"

// flagSet is a flag.FlagSet with the conventions of SPEC §3: each flag is also read from the
// environment, LMDeploy's spellings are accepted, and a bad value becomes one line naming the flag.
// The flag package already parses both --flag value and --flag=value.
type flagSet struct {
	cmd   string // "lmproxy serve": starts every message
	about string // what --help says under the usage line
	fs    *flag.FlagSet
	flags []*flagDef // in registration order, for --help
	err   error      // the failed Set of the last Parse, worded for the user
}

// flagDef is one flag with its other spellings and sources.
type flagDef struct {
	set     *flagSet
	name    string
	arg     string // the value's placeholder in --help; "" for a switch
	usage   string
	value   flag.Value
	aliases []string
	envs    []envVar // LMDeploy's variables, read after $LMPROXY_<FLAG>
	given   bool     // set on the command line, under any spelling
	inEnv   bool     // set from the environment
	spaced  bool     // any number of values may follow it, as LMDeploy's nargs='*' takes them
}

// envVar is an environment variable of LMDeploy's (or aiohttp's) that also feeds a flag.
type envVar struct {
	name    string
	seconds bool // the value is in seconds ("10", "2.5"); a Go duration is accepted too
}

func newFlagSet(cmd, about string) *flagSet {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	// The flag package's own messages and usage are multi-line; we print our own.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flagSet{cmd: cmd, about: about, fs: fs}
}

// add registers value as --name; arg names the value in --help ("" for a switch). The value holds
// the default when add is called.
func (s *flagSet) add(value flag.Value, name, arg, usage string) *flagDef {
	d := &flagDef{set: s, name: name, arg: arg, usage: usage, value: value}
	s.flags = append(s.flags, d)
	s.fs.Var(setter{d, name}, name, usage)
	return d
}

// alias accepts --name as another spelling of the flag (LMDeploy's).
func (d *flagDef) alias(name string) *flagDef {
	d.aliases = append(d.aliases, name)
	d.set.fs.Var(setter{d, name}, name, d.usage)
	return d
}

// env reads the flag from LMDeploy's variable name too, after $LMPROXY_<FLAG>.
func (d *flagDef) env(name string, seconds bool) *flagDef {
	d.envs = append(d.envs, envVar{name, seconds})
	return d
}

// spacedValues lets the flag take several space-separated values (--api-keys k1 k2), or none, as
// LMDeploy's flags with nargs='*' do, besides its own comma-separated form.
func (d *flagDef) spacedValues() *flagDef {
	d.spaced = true
	return d
}

// joinSpaced rewrites "--name v1 v2" for a spaced flag as "--name=v1,v2", so that the flag package,
// which stops at the first argument that is not a flag, reads every value; "--name" with no value
// becomes "--name=", the empty list, rather than taking the next flag as its value.
func (s *flagSet) joinSpaced(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		if args[i] == "--" { // the flag package reads no flag after it
			return append(out, args[i:]...)
		}
		name := strings.TrimPrefix(strings.TrimPrefix(args[i], "-"), "-") // its two spellings
		if name == args[i] || strings.Contains(name, "=") || s.spacedFlag(name) == nil {
			out = append(out, args[i])
			continue
		}
		j := i + 1
		for j < len(args) && !strings.HasPrefix(args[j], "-") {
			j++
		}
		out = append(out, "--"+name+"="+strings.Join(args[i+1:j], ","))
		i = j - 1
	}
	return out
}

// def returns the flag spelt name (any of its spellings), or nil.
func (s *flagSet) def(name string) *flagDef {
	if f := s.fs.Lookup(name); f != nil {
		if v, ok := f.Value.(setter); ok {
			return v.d
		}
	}
	return nil
}

// spacedFlag returns the spaced flag spelt name (any of its spellings), or nil.
func (s *flagSet) spacedFlag(name string) *flagDef {
	if d := s.def(name); d != nil && d.spaced {
		return d
	}
	return nil
}

// setter is what the flag package holds for each spelling: it records which flag was given and
// words a failed value for the user, naming the flag as it was typed.
type setter struct {
	d    *flagDef
	name string
}

func (v setter) String() string { return v.d.value.String() }

func (v setter) Set(s string) error {
	if err := v.d.value.Set(s); err != nil {
		v.d.set.err = fmt.Errorf("invalid value %q for --%s: %w", shown(s), v.name, err)
		return err
	}
	v.d.given = true
	return nil
}

// shown is a flag's value as an error shows it: a URL in it (a comma-separated list included) as
// messages.ShownURL shows one, without its password.
func shown(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = messages.ShownURL(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

// IsBoolFlag lets switches go without a value (--ssl), as the flag package does for its own.
func (v setter) IsBoolFlag() bool {
	b, ok := v.d.value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// parse reads args, then the environment for each flag the command line left out. It returns
// flag.ErrHelp for -h/--help and otherwise an error worded as one line.
func (s *flagSet) parse(args []string) error {
	if err := s.fs.Parse(s.joinSpaced(args)); err != nil {
		if s.err != nil {
			return s.err
		}
		return flagError(err)
	}
	if s.fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (flags start with --)", s.fs.Arg(0))
	}
	for _, d := range s.flags {
		if !d.given {
			if err := d.fromEnv(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flagError rewords the flag package's messages in the --name style of the rest.
func flagError(err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return errors.New("unknown flag --" + name)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return errors.New("missing value for --" + name)
	}
	return err
}

// fromEnv sets the flag from the first of its variables that is set and not empty.
func (d *flagDef) fromEnv() error {
	for _, e := range d.envVars() {
		raw := os.Getenv(e.name)
		if raw == "" {
			continue
		}
		v := raw
		if e.seconds {
			v = seconds(raw)
		}
		if err := d.value.Set(v); err != nil {
			return fmt.Errorf("invalid value %q in $%s for --%s: %w", shown(raw), e.name, d.name, err)
		}
		d.inEnv = true
		return nil
	}
	return nil
}

// chosen reports whether the user set the flag name, on the command line or in the environment,
// rather than left it at its default.
func (s *flagSet) chosen(name string) bool {
	d := s.def(name)
	return d != nil && (d.given || d.inEnv)
}

// envVars lists the flag's variables, first wins: $LMPROXY_<FLAG>, then LMDeploy's.
func (d *flagDef) envVars() []envVar {
	own := envPrefix + strings.ToUpper(strings.ReplaceAll(d.name, "-", "_"))
	return append([]envVar{{name: own}}, d.envs...)
}

// seconds turns LMDeploy's seconds ("10", "2.5") into a Go duration. Anything else is left as it
// is for the flag to judge, so a Go duration works too.
func seconds(v string) string {
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(f) || math.Abs(f) > math.MaxInt64/float64(time.Second) {
		return v
	}
	return time.Duration(f * float64(time.Second)).String()
}

// exit ends a command that failed to parse: --help prints the usage on stdout and exits 0, any other
// error is one line on stderr and exits 2.
func (s *flagSet) exit(err error, stdout, stderr io.Writer) int {
	if errors.Is(err, flag.ErrHelp) {
		s.usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "%s: %v\n", s.cmd, err)
	return 2
}

// usage prints the command's flags with their spellings, defaults and variables.
func (s *flagSet) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s [flags]\n\n%s\n\n", s.cmd, s.about)
	fmt.Fprint(w, "Flags (--flag value or --flag=value). A flag left out is read from its environment\n"+
		"variables, first set wins; durations are Go durations (200ms, 10s, 1m30s).\n")
	for _, d := range s.flags {
		names := "--" + d.name
		for _, a := range d.aliases {
			names += ", --" + a
		}
		if d.arg != "" {
			names += " " + d.arg
		}
		fmt.Fprintf(w, "  %s\n        %s", names, strings.ReplaceAll(d.usage, "\n", "\n        "))
		if def := s.fs.Lookup(d.name).DefValue; def != "" && def != "false" {
			fmt.Fprintf(w, " (default %s)", def)
		}
		var envs []string
		for _, e := range d.envVars() {
			if e.seconds {
				e.name += " (seconds)"
			}
			envs = append(envs, e.name)
		}
		fmt.Fprintf(w, "\n        env: %s\n", strings.Join(envs, ", "))
	}
}
