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

// forwardedHeaders appends to hs the headers the proxy adds to a client's request on its way to a
// replica: X-Forwarded-For, -Host and -Proto and the request ID. They replace any of the client's
// of the same name (writeRequest skips those).
func forwardedHeaders(hs []header, r *http.Request, requestID string) []header {
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		hs = append(hs, header{"X-Forwarded-For", ip})
	}
	if r.Host != "" { // HTTP/1.0 may name none
		hs = append(hs, header{"X-Forwarded-Host", r.Host})
	}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	return append(hs, header{"X-Forwarded-Proto", proto}, header{"X-Request-Id", requestID})
}

// isEventStream reports whether a Content-Type is text/event-stream, without allocating.
func isEventStream(contentType string) bool {
	const sse = "text/event-stream"
	return len(contentType) >= len(sse) && strings.EqualFold(contentType[:len(sse)], sse)
}
