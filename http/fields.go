package http

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/tidwall/gjson"
)

// requestFields are the only parts of an inference request body the proxy reads.
type requestFields struct {
	model  string
	stream bool
	n      int64 // 0 when absent
}

// parseFields checks that body is a JSON object and reads model, stream and n from it without decoding
// the rest: validJSON and gjson scan the bytes without building the document.
func parseFields(body []byte) (requestFields, error) {
	var f requestFields
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	switch {
	case len(trimmed) == 0:
		return f, errorf(http.StatusBadRequest, "request body is empty: send a JSON object")
	case !utf8.Valid(body):
		return f, errorf(http.StatusBadRequest, "request body is not valid UTF-8")
	case !validJSON(body):
		return f, errorf(http.StatusBadRequest, "request body is not valid JSON")
	case trimmed[0] != '{':
		return f, errorf(http.StatusBadRequest, "request body must be a JSON object")
	}
	model, stream, n := topFields(body)
	switch m := model; {
	case !m.Exists() || m.Type == gjson.Null:
		return f, errorf(http.StatusBadRequest, `missing field "model"`)
	case m.Type != gjson.String:
		return f, errorf(http.StatusBadRequest, `field "model" must be a string`)
	case m.Str == "":
		return f, errorf(http.StatusBadRequest, `field "model" must not be empty`)
	default:
		f.model = strings.Clone(m.Str) // m.Str may point into body
		// gjson decodes the \u escape of a lone UTF-16 surrogate wrongly (it swallows the escape that
		// follows); encoding/json, which decoded the replicas' model lists, makes it U+FFFD. Decode
		// escaped names with it, so both sides spell a name alike. m.Raw passed validJSON: no error.
		if strings.Contains(m.Raw, `\u`) {
			_ = json.Unmarshal([]byte(m.Raw), &f.model)
		}
	}
	switch stream.Type {
	case gjson.True:
		f.stream = true
	case gjson.False, gjson.Null:
	default:
		return f, errorf(http.StatusBadRequest, `field "stream" must be a boolean`)
	}
	switch n.Type {
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

// topFields returns the top-level fields model, stream and n of a valid JSON object in one pass
// over it. Of a key given twice the last counts, as for the replica's own parser (Python's json,
// Go's encoding/json): the request goes where its model says for whoever reads it. The body is
// read in place, not copied as gjson.GetManyBytes would: the results' strings may point into it.
func topFields(body []byte) (model, stream, n gjson.Result) {
	gjson.Parse(unsafe.String(unsafe.SliceData(body), len(body))).ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "model":
			model = v
		case "stream":
			stream = v
		case "n":
			n = v
		}
		return true
	})
	return model, stream, n
}

// maxFastNesting bounds the bodies validJSON checks with gjson's validator, which recurses once per
// nesting level: a body with no more '{' and '[' bytes than this cannot nest deeper.
const maxFastNesting = 128

// validJSON reports whether body is valid JSON. gjson's validator takes a third of json.Valid's time
// on a chat request (about 1 µs less per request); a body that might nest deeply goes to
// json.Valid, whose stack is its own and bounded, so no body can grow a goroutine's stack with it.
func validJSON(body []byte) bool {
	if bytes.Count(body, []byte("{"))+bytes.Count(body, []byte("[")) <= maxFastNesting {
		return gjson.ValidBytes(body)
	}
	return json.Valid(body)
}
