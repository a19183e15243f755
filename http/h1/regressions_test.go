package h1_test

import (
	"testing"
)

// Tests named after the bugs they found in h1, each fixed in its own change.

// TestHeaderNameWithSpaceRefused: h1 took a header name with a space in it (net/textproto lets one
// through before the colon) as is, so "Content-Length : 34" did not frame the body: the body was
// read as a next request, a request smuggled past any front end that reads the header as the
// length. net/http refuses header names that are not tokens; so does h1 now.
func TestHeaderNameWithSpaceRefused(t *testing.T) {
	runConformanceRows(t, "header name with space", "Content-Length with a space before the colon")
}

// TestFramingHeadersInRequestHeader: the handler saw "Transfer-Encoding: chunked" in
// Request.Header, and every copy of a repeated Content-Length; net/http moves the first to
// Request.TransferEncoding and keeps one Content-Length, and handlers (a proxy copying headers
// upstream) rely on it.
func TestFramingHeadersInRequestHeader(t *testing.T) {
	runConformanceRows(t, "chunked request body", "chunked request body with trailers",
		"chunked request body with declared trailers", "Content-Length duplicated",
		"small chunked body not read", "truncated chunked body", "bad chunk size",
		"chunked request body of 1 MiB")
}
