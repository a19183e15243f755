// Package messages holds the messages that the registry, replica and DistServe link actors exchange
// with each other and with the HTTP layer, and the leases and outcomes of the requests the HTTP layer
// routes through the registry. Each is a plain value.
package messages

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Role is what part of serving a replica plays: LMDeploy's EngineRole numbers.
type Role int

// The roles, numbered as LMDeploy numbers them on the wire.
const (
	Hybrid  Role = 1
	Prefill Role = 2
	Decode  Role = 3
)

// String returns the role's name as LMDeploy spells it.
func (r Role) String() string {
	switch r {
	case Hybrid:
		return "Hybrid"
	case Prefill:
		return "Prefill"
	case Decode:
		return "Decode"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// ParseRole accepts a role's number or its name (any case).
func ParseRole(s string) (Role, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil {
		r := Role(n)
		if r < Hybrid || r > Decode {
			return 0, fmt.Errorf("unknown role %d (want 1, 2 or 3)", n)
		}
		return r, nil
	}
	for _, r := range []Role{Hybrid, Prefill, Decode} {
		if strings.EqualFold(s, r.String()) {
			return r, nil
		}
	}
	return 0, fmt.Errorf("unknown role %q (want Hybrid, Prefill or Decode)", s)
}

// UnmarshalJSON accepts the number (1) or the name ("Hybrid"), since LMDeploy's api_server sends the
// number and people writing JSON by hand write the name.
func (r *Role) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case float64:
		if v != float64(int(v)) {
			return fmt.Errorf("unknown role %v", v)
		}
		p, err := ParseRole(strconv.Itoa(int(v)))
		*r = p
		return err
	case string:
		p, err := ParseRole(v)
		*r = p
		return err
	}
	return fmt.Errorf("role must be a number or a name, not %s", b)
}
