package http

import (
	"net"
	"net/http"
	"net/textproto"
	"strings"
)

// hopHeaders belong to one connection and are never forwarded, either way (RFC 9110 §7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// copyHeaders copies src into dst without hop-by-hop headers, including those src's Connection
// header names.
func copyHeaders(dst, src http.Header) {
	var named []string
	for _, v := range src["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				named = append(named, textproto.CanonicalMIMEHeaderKey(f))
			}
		}
	}
next:
	for k, vv := range src {
		for _, h := range hopHeaders {
			if k == h {
				continue next
			}
		}
		for _, h := range named {
			if k == h {
				continue next
			}
		}
		dst[k] = vv
	}
}

// outboundHeaders are the headers sent to the replica: the client's, less Host and hop-by-hop
// headers, with X-Forwarded-* and the request ID.
func outboundHeaders(r *http.Request, requestID string) http.Header {
	h := make(http.Header, len(r.Header)+4)
	copyHeaders(h, r.Header)
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h["X-Forwarded-For"] = []string{ip}
	}
	h["X-Forwarded-Host"] = []string{r.Host}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	h["X-Forwarded-Proto"] = []string{proto}
	h["X-Request-Id"] = []string{requestID}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = []string{""} // don't let Go's default User-Agent stand in for the client's
	}
	return h
}

// isEventStream reports whether a Content-Type is text/event-stream, without allocating.
func isEventStream(contentType string) bool {
	const sse = "text/event-stream"
	return len(contentType) >= len(sse) && strings.EqualFold(contentType[:len(sse)], sse)
}
