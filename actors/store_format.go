package actors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strings"

	"github.com/lmproxy/lmproxy/messages"
)

// stateVersion is the version of the format earlier lmproxy versions wrote, which is still read.
const stateVersion = 1

// stateFile is that format: {"version": 1, "replicas": [{"url", "models", "role", "speed"}]}.
type stateFile struct {
	Version  int                     `json:"version"`
	Replicas []messages.Registration `json:"replicas"`
}

// lmdeployStatus is one node of LMDeploy's proxy_config.json, a map of URL to the JSON text of the
// node's status: the fields of LMDeploy's Status, in its order and with the types pydantic's
// model_dump_json writes (role the EngineRole number, latency the deque as a list, speed an int or
// null). Unfinished and latency are written as a new node's and not read: they describe requests of
// the old process.
type lmdeployStatus struct {
	Role       messages.Role `json:"role"`
	Models     []string      `json:"models"`
	Unfinished int           `json:"unfinished"`
	Latency    []float64     `json:"latency"`
	Speed      *float64      `json:"speed"`
	// ExactSpeed keeps a fractional speed, which Status's int speed cannot hold; pydantic ignores
	// keys it does not know, so LMDeploy still reads the node, with Speed rounded.
	ExactSpeed *float64 `json:"lmproxy_speed,omitempty"`
}

// encodeState writes LMDeploy's proxy_config.json, indented as LMDeploy indents it, so that the
// file is interchangeable both ways: `lmdeploy serve proxy` started on it (a rollback) keeps the
// replicas, where a format of lmproxy's own would stop it at start.
func encodeState(regs []messages.Registration) ([]byte, error) {
	nodes := make(map[string]string, len(regs))
	for _, r := range regs {
		text, err := json.Marshal(toLMDeploy(r))
		if err != nil {
			return nil, err
		}
		nodes[r.URL] = string(text)
	}
	b, err := json.MarshalIndent(nodes, "", "  ")
	return append(b, '\n'), err
}

// toLMDeploy is r as LMDeploy's Status, whose validation refuses a null models list and a speed
// with a fractional part.
func toLMDeploy(r messages.Registration) lmdeployStatus {
	st := lmdeployStatus{Role: r.Role, Models: r.Models, Latency: []float64{}}
	if st.Models == nil {
		st.Models = []string{}
	}
	if r.Speed > 0 { // 0 is no speed declared: LMDeploy's None
		whole := wholeSpeed(r.Speed)
		st.Speed = &whole
		if whole != r.Speed {
			st.ExactSpeed = &r.Speed
		}
	}
	return st
}

// wholeSpeed rounds a declared speed to LMDeploy's int, at least 1 so that it stays declared.
func wholeSpeed(speed float64) float64 { return max(1, math.Round(speed)) }

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
		regs = append(regs, fromLMDeploy(u, st))
	}
	// A map has no order; the registry's snapshots are sorted by URL, and so is this.
	slices.SortFunc(regs, func(a, b messages.Registration) int { return cmp.Compare(a.URL, b.URL) })
	return regs, nil
}

// fromLMDeploy is the registration of the node at url. The exact speed lmproxy wrote is taken only
// while it still rounds to speed: a speed edited by hand, or LMDeploy's rewrite (which drops the
// exact one), wins.
func fromLMDeploy(url string, st lmdeployStatus) messages.Registration {
	reg := messages.Registration{URL: url, Models: st.Models, Role: st.Role}
	switch {
	case st.Speed == nil || *st.Speed <= 0: // none; LMDeploy's own example gives -1
	case st.ExactSpeed != nil && wholeSpeed(*st.ExactSpeed) == *st.Speed:
		reg.Speed = *st.ExactSpeed
	default:
		reg.Speed = *st.Speed
	}
	return reg
}

// checkRegistration holds a restored entry to what POST /nodes/add accepts.
func checkRegistration(r messages.Registration) error {
	u, err := url.Parse(r.URL)
	switch {
	case err == nil && u.User != nil:
		// /nodes/add refuses credentials in a replica URL.
		return fmt.Errorf("%s: a URL with user info", messages.ShownURL(r.URL))
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.HasSuffix(r.URL, "/"):
		return fmt.Errorf("invalid URL %q", messages.ShownURL(r.URL))
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
