package http

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
)

// Error is an error with the HTTP status it answers to. Handlers return these; one renderer turns
// them into the body their path group uses.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return e.Message }

// errorf makes an *Error.
func errorf(status int, msg string) *Error { return &Error{Status: status, Message: msg} }

// openAIError is the error body of /v1/*: OpenAI's nested object (what SDKs read) and LMDeploy's
// flat ErrorResponse fields beside it.
type openAIError struct {
	Error   openAIErrorDetail `json:"error"`
	Object  string            `json:"object"`
	Message string            `json:"message"`
	Type    string            `json:"type"`
	Param   *string           `json:"param"`
	Code    int               `json:"code"`
}

type openAIErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    int     `json:"code"`
}

// errorType names a status the way OpenAI's API does.
func errorType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusNotFound:
		return "not_found_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status < 500:
		return "invalid_request_error"
	}
	return "server_error"
}

// openAIErrorBody renders the /v1/* error body for status and msg.
func openAIErrorBody(status int, msg string) []byte {
	t := errorType(status)
	b, _ := json.Marshal(openAIError{
		Error:   openAIErrorDetail{Message: msg, Type: t, Code: status},
		Object:  "error",
		Message: msg,
		Type:    t,
		Code:    status,
	})
	return b
}

// sseErrorEvent is the last event of a stream whose replica failed mid-way (SPEC §7).
func sseErrorEvent(status int, msg string) []byte {
	b, _ := json.Marshal(map[string]openAIErrorDetail{"error": {Message: msg, Type: "server_error", Code: status}})
	return append(append([]byte("data: "), b...), '\n', '\n')
}

// writeError renders err: the OpenAI body on /v1/*, {"detail": ...} elsewhere. An error that is not
// an *Error is a bug of ours: 500 with a generic message (the real one is logged by the caller).
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = errorf(http.StatusInternalServerError, "internal error")
	}
	if t := track(w); t != nil {
		t.err = err
	}
	var body []byte
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		body = openAIErrorBody(e.Status, e.Message)
	} else {
		body, _ = json.Marshal(map[string]string{"detail": e.Message})
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	w.WriteHeader(e.Status)
	w.Write(body)
}

// writeJSON writes v as a JSON answer with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"detail":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}
