package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lmproxy/lmproxy/messages"
)

// The flag.Value types of the commands. Each checks its value when it is set, so a bad one is
// reported by name before anything starts, and its String is the default shown by --help.

// stringValue is free text, optionally checked.
type stringValue struct {
	p     *string
	check func(string) error // nil accepts anything
}

func (v stringValue) String() string { return *v.p }

func (v stringValue) Set(s string) error {
	if v.check != nil {
		if err := v.check(s); err != nil {
			return err
		}
	}
	*v.p = s
	return nil
}

// boolValue is a switch: --ssl, --ssl=false, LMPROXY_SSL=1.
type boolValue struct{ p *bool }

func (v boolValue) String() string   { return strconv.FormatBool(*v.p) }
func (v boolValue) IsBoolFlag() bool { return true }

func (v boolValue) Set(s string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return errors.New("want true or false")
	}
	*v.p = b
	return nil
}

// intValue is a whole number in [min, max].
type intValue struct {
	p        *int
	min, max int
}

func (v intValue) String() string { return strconv.Itoa(*v.p) }

func (v intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < v.min || n > v.max {
		if v.max == math.MaxInt {
			return fmt.Errorf("want a whole number >= %d", v.min)
		}
		return fmt.Errorf("want a number %d-%d", v.min, v.max)
	}
	*v.p = n
	return nil
}

// statusValue is an HTTP error status, 400-599, or 0 for none.
type statusValue struct{ p *int }

func (v statusValue) String() string { return strconv.Itoa(*v.p) }

func (v statusValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n != 0 && (n < 400 || n > 599) {
		return errors.New("want an HTTP error status 400-599, or 0 for none")
	}
	*v.p = n
	return nil
}

// floatValue is a number >= 0.
type floatValue struct{ p *float64 }

func (v floatValue) String() string { return strconv.FormatFloat(*v.p, 'g', -1, 64) }

func (v floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return errors.New("want a number >= 0")
	}
	*v.p = f
	return nil
}

// durationValue is a Go duration, > 0 when positive is set and >= 0 otherwise.
type durationValue struct {
	p        *time.Duration
	positive bool
}

func (v durationValue) String() string { return v.p.String() }

func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		return errors.New("want a duration such as 10s or 250ms")
	case v.positive && d <= 0:
		return errors.New("want a duration > 0")
	case d < 0:
		return errors.New("want a duration >= 0")
	}
	*v.p = d
	return nil
}

// enumValue is one of a few words, matched in any case and stored as spelled in choices.
type enumValue struct {
	p       *string
	choices []string
	aliases map[string]string // other accepted words, upper case, to their choice
}

func (v enumValue) String() string { return *v.p }

func (v enumValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if c, ok := v.aliases[strings.ToUpper(s)]; ok {
		s = c
	}
	for _, c := range v.choices {
		if strings.EqualFold(s, c) {
			*v.p = c
			return nil
		}
	}
	if len(v.aliases) == 0 {
		return fmt.Errorf("want one of %s", strings.Join(v.choices, ", "))
	}
	return fmt.Errorf("want one of %s (or %s)", strings.Join(v.choices, ", "), strings.Join(slices.Sorted(maps.Keys(v.aliases)), ", "))
}

// listValue is a comma-separated list that may be repeated: --model a,b --model c. The first value
// given replaces the default; later ones add to it.
type listValue struct {
	p     *[]string
	check func(string) error // each item; nil accepts anything
	set   bool
}

func (v *listValue) String() string { return strings.Join(*v.p, ",") }

func (v *listValue) Set(s string) error {
	var items []string
	for _, it := range strings.Split(s, ",") {
		if it = strings.TrimSpace(it); it == "" {
			continue
		}
		if v.check != nil {
			if err := v.check(it); err != nil {
				return err
			}
		}
		items = append(items, it)
	}
	if !v.set {
		*v.p, v.set = nil, true
	}
	*v.p = append(*v.p, items...)
	return nil
}

// sizeValue is a byte count > 0, written as parseSize reads it.
type sizeValue struct{ p *int64 }

func (v sizeValue) String() string { return formatSize(*v.p) }

func (v sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

// sizeUnits are the suffixes parseSize knows, matched in any case: binary (KiB = 1024 bytes) and
// decimal (KB = 1000 bytes) as the IEC and SI define them. Longer suffixes come first, so "B" is
// tried last.
var sizeUnits = []struct {
	suffix string
	n      int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// parseSize reads a byte count > 0: "1024", "1KiB", "64MiB", "1GB" (a space before the unit is fine).
func parseSize(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range sizeUnits {
		if len(num) > len(u.suffix) && strings.EqualFold(num[len(num)-len(u.suffix):], u.suffix) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return 0, errors.New("want a size > 0 in bytes (1048576) or with a unit (KiB, MiB, GiB, KB, MB, GB)")
	}
	return n * mult, nil
}

// formatSize writes n with the largest binary unit that divides it, as --help shows defaults.
func formatSize(n int64) string {
	s := strconv.FormatInt(n, 10)
	for _, u := range sizeUnits { // the binary units ascend: the last that divides n is the largest
		if strings.HasSuffix(u.suffix, "iB") && n >= u.n && n%u.n == 0 {
			s = strconv.FormatInt(n/u.n, 10) + u.suffix
		}
	}
	return s
}

// checkURL accepts what /nodes/add accepts: an http or https URL with a host.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not a URL like http://host:port", shown(s))
	}
	return nil
}

// checkReplicaURL accepts a replica's URL: checkURL's, without credentials, which /nodes/add refuses
// (they would be shown in logs and metrics, and are never sent).
func checkReplicaURL(s string) error {
	if err := checkURL(s); err != nil {
		return err
	}
	if u, _ := url.Parse(s); u.User != nil {
		return fmt.Errorf("%s: a replica URL must not carry credentials (user:password@)", messages.ShownURL(s))
	}
	return nil
}

// hostLookupTimeout bounds the look-up of a listen host's name: a resolver that does not answer
// should stop the start with the flag's error, not hold it up.
const hostLookupTimeout = 3 * time.Second

// checkHost accepts a listen host: empty (every interface), an IP address, or a name that resolves.
// The name is looked up now, so that one that does not resolve is reported as a bad flag before
// anything starts rather than as a failure to listen. LookupHost answers an IP address without
// asking DNS.
func checkHost(s string) error {
	if s == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), hostLookupTimeout)
	defer cancel()
	if _, err := net.DefaultResolver.LookupHost(ctx, s); err != nil {
		return fmt.Errorf("want an IP address or a host name that resolves: %w", err)
	}
	return nil
}
