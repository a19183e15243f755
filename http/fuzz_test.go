package http

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// badJSONSeeds are bodies every JSON parser of the proxy must refuse or survive: truncations, the
// wrong top-level type, wrong field types, invalid UTF-8, extremes.
var badJSONSeeds = []string{
	"", " ", "\n\t\r", "{", "}", "{}", "[]", "null", "true", "0", `""`, `"model"`,
	`{"model"`, `{"model":`, `{"model":"m"`, `{"model":"m",}`, `{"model":"m"}}`, `{"model":"m"} {}`,
	`[{"model":"m"}]`, `{"model":["m"]}`, `{"model":{"name":"m"}}`, `{"model":1}`, `{"model":true}`,
	`{"model":null}`, `{"model":""}`, "{\"model\":\"\xff\"}", "\xef\xbb\xbf{\"model\":\"m\"}",
	"{\"model\":\"m\",\"x\":\"\xc3\x28\"}", `{"model":"m","n":1e400}`, `{"model":"m","n":-1e400}`,
	`{"model":"m","n":9223372036854775807}`, `{"model":"m","n":9223372036854775808}`,
	`{"model":"m","n":9007199254740993}`, `{"model":"m","n":1.5}`, `{"model":"m","n":0}`,
	`{"model":"m","n":-0}`, `{"model":"m","n":1e0}`, `{"model":"m","n":"2"}`, `{"model":"m","n":[1]}`,
	`{"model":"m","stream":"true"}`, `{"model":"m","stream":1}`, `{"model":"m","stream":null}`,
	`{"model":"m","stream":true,"n":2}`, `{"a":{"model":"nested"},"model":"top"}`,
	`{"a":{"b":{"c":[{"d":{"model":"deep"}}]}}}`, strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	`{"model":"deep","x":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
	`{"model":"deep","x":` + strings.Repeat("[", 200) + strings.Repeat("]", 199) + `}`,
	`{"mod\u0065l":"escaped key"}`, `{"model":"\u00e9\u4e2d\ud83d\ude00"}`, `{"model":"\ud800"}`,
	`{"model":"\ud800\u0041"}`, `{"model":"\udc00\ud800"}`, `{"model":"a\u0000b"}`, `{"model":"\/\"\\"}`,
	`{"model":"a","model":"b"}`, `{"model":"a","mod\u0065l":"b"}`, `{"model":1,"model":"b"}`,
	`{"stream":true,"stream":false,"model":"m"}`, `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`,
}

// registrationSeeds are /nodes/add bodies: LMDeploy api_server's exact registration, the role by
// name, and the ways a URL, role or speed can be wrong.
var registrationSeeds = []string{
	`{"url": "http://0.0.0.0:23333", "status": {"models": ["internlm2_5-7b-chat"], "role": 1}}`,
	`{"url": "http://10.1.2.3:23333", "status": {"models": ["qwen"], "role": "Prefill"}}`,
	`{"url": "http://h:1", "status": {"models": ["m"], "role": "decode", "speed": 10}}`,
	`{"url": "http://h:1"}`, `{"url": "https://h:1/"}`, `{"url": "http://h:1///"}`, `{"url": "  http://h:1  "}`,
	`{"url": "http://h:1/v1"}`, `{"url": "http://h:1/#/"}`, `{"url": "http://h:1?x=/"}`, `{"url": "http://u:p@h:1"}`,
	`{"url": "h:1"}`, `{"url": "ftp://h"}`, `{"url": "http://"}`, `{"url": "http:///x"}`, `{"url": "/"}`,
	`{"url": ""}`, `{"url": 1}`, `{"url": null}`, `{"url": "http://[::1]:2"}`, `{"url": "http://h\n:1"}`,
	`{"url": "http://h:1", "status": null}`, `{"url": "http://h:1", "status": {}}`,
	`{"url": "http://h:1", "status": {"role": 0}}`, `{"url": "http://h:1", "status": {"role": 4}}`,
	`{"url": "http://h:1", "status": {"role": 1.5}}`, `{"url": "http://h:1", "status": {"role": 1e300}}`,
	`{"url": "http://h:1", "status": {"role": null}}`, `{"url": "http://h:1", "status": {"role": ["Hybrid"]}}`,
	`{"url": "http://h:1", "status": {"speed": -1}}`, `{"url": "http://h:1", "status": {"speed": -0}}`,
	`{"url": "http://h:1", "status": {"speed": 1e308}}`, `{"url": "http://h:1", "status": {"speed": "fast"}}`,
	`{"url": "http://h:1", "status": {"models": [""]}}`, `{"url": "http://h:1", "status": {"models": "m"}}`,
	`{"url": "http://h:1", "url": "ftp://x"}`, `{"url": "http://h\u003a1"}`,
}

// FuzzParseFields: parseFields never panics, refuses with 400 only, and when it accepts, the body is
// a JSON object with a non-empty string model, and it agrees exactly with a full encoding/json decode
// of the three fields, duplicate keys included (the last one counts for both).
func FuzzParseFields(f *testing.F) {
	for _, s := range slices.Concat(badJSONSeeds, registrationSeeds) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := parseFields(body)
		var top map[string]json.RawMessage
		isObject := utf8.Valid(body) && json.Unmarshal(body, &top) == nil && top != nil
		if err != nil {
			requireBadRequest(t, err)
		} else if got.model == "" || got.n < 0 || !isObject {
			t.Fatalf("accepted %q as %+v (a JSON object: %v)", body, got, isObject)
		}
		if !isObject {
			return
		}
		want, ok := referenceFields(top)
		if ok != (err == nil) || (ok && got != want) {
			t.Fatalf("parseFields(%q) = %+v, %v; encoding/json reads %+v, accept=%v", body, got, err, want, ok)
		}
	})
}

// FuzzParseAddRequest: parseAddRequest never panics, refuses with 400 only, and what it accepts is a
// registration the registry can key and route: an http(s) URL with a host and no trailing slash that
// normalizes to itself, a role of 1 to 3, a speed that is a non-negative number, named models.
func FuzzParseAddRequest(f *testing.F) {
	for _, s := range slices.Concat(registrationSeeds, badJSONSeeds) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		reg, _, err := parseAddRequest(body)
		if err != nil {
			requireBadRequest(t, err)
			return
		}
		u, perr := url.Parse(reg.URL)
		switch {
		case perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			t.Fatalf("accepted URL %q (%v)", reg.URL, perr)
		case strings.HasSuffix(reg.URL, "/"):
			t.Fatalf("accepted URL %q with a trailing slash", reg.URL)
		}
		if again, err := normalizeURL(reg.URL); err != nil || again != reg.URL {
			t.Fatalf("URL %q normalizes again to %q, %v: one replica would get two keys", reg.URL, again, err)
		}
		if reg.Role < 1 || reg.Role > 3 {
			t.Fatalf("accepted role %d", reg.Role)
		}
		if !(reg.Speed >= 0) || math.IsInf(reg.Speed, 0) {
			t.Fatalf("accepted speed %v", reg.Speed)
		}
		for _, m := range reg.Models {
			if m == "" {
				t.Fatalf("accepted an empty model name in %q", body)
			}
		}
	})
}

// requireBadRequest fails unless err is the proxy's 400 error.
func requireBadRequest(t *testing.T, err error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Message == "" {
		t.Fatalf("refused with %#v, want a 400 *Error with a message", err)
	}
}

// referenceFields applies SPEC §4's rules to a fully decoded object, the slow and obvious way; ok is
// false when the body must be refused.
func referenceFields(top map[string]json.RawMessage) (f requestFields, ok bool) {
	if raw, found := top["model"]; !found || string(raw) == "null" || json.Unmarshal(raw, &f.model) != nil || f.model == "" {
		return requestFields{}, false
	}
	if raw, found := top["stream"]; found && string(raw) != "null" && json.Unmarshal(raw, &f.stream) != nil {
		return requestFields{}, false
	}
	if raw, found := top["n"]; found && string(raw) != "null" {
		// raw is a valid JSON value here, so ParseFloat succeeds only for a JSON number.
		v, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || v != math.Trunc(v) || v < 1 || v >= 1<<63 {
			return requestFields{}, false
		}
		f.n = int64(v)
	}
	return f, true
}
