package messages

import (
	"net/url"
	"strings"
)

// ShownURL is a replica URL as errors and logs may show it: unchanged without an @, with its
// password masked (url.URL.Redacted) when it parses with user info, and not at all when its @ is not
// one the URL parser takes as user info ("admin:pw@host:1" parses as a scheme and an opaque part).
// A replica's URL is the client's or the user's text, and may hold a password.
func ShownURL(raw string) string {
	if !strings.Contains(raw, "@") {
		return raw
	}
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		return u.Redacted()
	}
	return "(a URL with user info, not shown)"
}
