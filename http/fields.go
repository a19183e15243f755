package http

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// requestFields are the only parts of an inference request body the proxy reads.
type requestFields struct {
	model  string
	stream bool
	n      int64 // 0 when absent
}

// parseFields checks that body is a JSON object and reads model, stream and n from it without decoding
// the rest: json.Valid and gjson scan the bytes without building the document.
func parseFields(body []byte) (requestFields, error) {
	var f requestFields
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	switch {
	case len(trimmed) == 0:
		return f, errorf(http.StatusBadRequest, "request body is empty: send a JSON object")
	case !utf8.Valid(body):
		return f, errorf(http.StatusBadRequest, "request body is not valid UTF-8")
	case !json.Valid(body):
		return f, errorf(http.StatusBadRequest, "request body is not valid JSON")
	case trimmed[0] != '{':
		return f, errorf(http.StatusBadRequest, "request body must be a JSON object")
	}
	res := gjson.GetManyBytes(body, "model", "stream", "n")
	switch m := res[0]; {
	case !m.Exists() || m.Type == gjson.Null:
		return f, errorf(http.StatusBadRequest, `missing field "model"`)
	case m.Type != gjson.String:
		return f, errorf(http.StatusBadRequest, `field "model" must be a string`)
	case m.Str == "":
		return f, errorf(http.StatusBadRequest, `field "model" must not be empty`)
	default:
		f.model = m.Str
		// gjson decodes the \u escape of a lone UTF-16 surrogate wrongly (it swallows the escape that
		// follows); encoding/json, which decoded the replicas' model lists, makes it U+FFFD. Decode
		// escaped names with it, so both sides spell a name alike. m.Raw passed json.Valid: no error.
		if strings.Contains(m.Raw, `\u`) {
			_ = json.Unmarshal([]byte(m.Raw), &f.model)
		}
	}
	switch s := res[1]; s.Type {
	case gjson.True:
		f.stream = true
	case gjson.False, gjson.Null:
	default:
		return f, errorf(http.StatusBadRequest, `field "stream" must be a boolean`)
	}
	switch n := res[2]; n.Type {
	case gjson.Null:
	case gjson.Number:
		if n.Num != float64(int64(n.Num)) || n.Num < 1 {
			return f, errorf(http.StatusBadRequest, `field "n" must be a positive integer`)
		}
		f.n = int64(n.Num)
	default:
		return f, errorf(http.StatusBadRequest, `field "n" must be a positive integer`)
	}
	return f, nil
}
