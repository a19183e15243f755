package actors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/lmproxy/lmproxy/messages"
)

// stateVersion is the version of the state file format that encodeState writes.
const stateVersion = 1

// stateFile is the state file: {"version": 1, "replicas": [{"url", "models", "role", "speed"}]}.
type stateFile struct {
	Version  int                     `json:"version"`
	Replicas []messages.Registration `json:"replicas"`
}

// lmdeployStatus is one node of LMDeploy's proxy_config.json, a map of URL to status, so a user
// moving from `lmdeploy serve proxy` keeps their replicas. Unfinished and latency are not read: they
// describe requests of the old process.
type lmdeployStatus struct {
	Models []string      `json:"models"`
	Role   messages.Role `json:"role"`
	Speed  *float64      `json:"speed"`
}

func encodeState(regs []messages.Registration) ([]byte, error) {
	if regs == nil {
		regs = []messages.Registration{} // "replicas": [] rather than null
	}
	b, err := json.MarshalIndent(stateFile{Version: stateVersion, Replicas: regs}, "", "  ")
	return append(b, '\n'), err
}

// decodeState reads either format and checks every entry: a file that fails is corrupt as a whole,
// since restoring part of it would silently drop replicas.
func decodeState(data []byte) ([]messages.Registration, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return nil, errors.New("not a JSON object")
	}
	var regs []messages.Registration
	if v, ok := top["version"]; ok {
		var f stateFile
		if err := json.Unmarshal(data, &f); err != nil {
			return nil, err
		}
		if f.Version != stateVersion {
			return nil, fmt.Errorf("unknown version %s", v)
		}
		regs = f.Replicas
	} else {
		var err error
		if regs, err = decodeLMDeploy(top); err != nil {
			return nil, err
		}
	}
	seen := make(map[string]bool, len(regs))
	for i, r := range regs {
		if err := checkRegistration(r); err != nil {
			return nil, fmt.Errorf("replica %d: %w", i, err)
		}
		if seen[r.URL] {
			return nil, fmt.Errorf("replica %s listed twice", r.URL)
		}
		seen[r.URL] = true
	}
	return regs, nil
}

// decodeLMDeploy reads LMDeploy's proxy_config.json, whose values are the JSON text of each node's
// status (pydantic's model_dump_json), or, if edited by hand, the status object itself.
func decodeLMDeploy(nodes map[string]json.RawMessage) ([]messages.Registration, error) {
	regs := make([]messages.Registration, 0, len(nodes))
	for u, raw := range nodes {
		if bytes.HasPrefix(raw, []byte(`"`)) {
			var text string
			if err := json.Unmarshal(raw, &text); err != nil {
				return nil, err
			}
			raw = json.RawMessage(text)
		}
		if !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
			return nil, fmt.Errorf("node %s: status is not an object", u)
		}
		st := lmdeployStatus{Role: messages.Hybrid}
		if err := json.Unmarshal(raw, &st); err != nil {
			return nil, fmt.Errorf("node %s: %w", u, err)
		}
		reg := messages.Registration{URL: u, Models: st.Models, Role: st.Role}
		if st.Speed != nil {
			reg.Speed = *st.Speed
		}
		regs = append(regs, reg)
	}
	// A map has no order; the registry's snapshots are sorted by URL, and so is this.
	slices.SortFunc(regs, func(a, b messages.Registration) int { return cmp.Compare(a.URL, b.URL) })
	return regs, nil
}

// checkRegistration holds a restored entry to what POST /nodes/add accepts.
func checkRegistration(r messages.Registration) error {
	u, err := url.Parse(r.URL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.HasSuffix(r.URL, "/"):
		return fmt.Errorf("invalid URL %q", r.URL)
	case r.Role < messages.Hybrid || r.Role > messages.Decode:
		return fmt.Errorf("%s: invalid role %d", r.URL, r.Role)
	case r.Speed < 0:
		return fmt.Errorf("%s: negative speed", r.URL)
	}
	for _, m := range r.Models {
		if m == "" {
			return fmt.Errorf("%s: empty model name", r.URL)
		}
	}
	return nil
}
