package http

import (
	_ "embed"
	"net/http"
)

// openAPIDocument describes the proxy's own API as OpenAPI 3.0. It is a JSON file rather than a
// structure built in Go so that it reads, and diffs, as the document clients get; openapi_test.go
// holds it to the routes the router really registers.
//
//go:embed openapi.json
var openAPIDocument []byte

// handleOpenAPI answers GET /openapi.json. Like /health it is open: it tells nothing a key protects.
func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPIDocument)
}
