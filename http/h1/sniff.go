package h1

import "net/http"

// sniffLen is how much of a body net/http's DetectContentType looks at.
const sniffLen = 512

// sniff sets the Content-Type net/http would, from the first bytes of the body (those pending,
// then next, which is about to follow them), unless the handler set one or a Content-Encoding, or
// the status has no body.
func (w *response) sniff(next []byte) {
	h := w.header
	if _, ok := h["Content-Type"]; ok || !w.bodyAllowed() || h.Get("Content-Encoding") != "" {
		return
	}
	data := w.pendingBytes()
	if len(data) < sniffLen && len(next) > 0 {
		// Into the pending buffer's room past its length, which nothing reads.
		data = append(data, next[:min(len(next), sniffLen-len(data))]...)
	}
	if len(data) > 0 {
		h["Content-Type"] = []string{http.DetectContentType(data)}
	}
}
