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
