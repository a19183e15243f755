package http

import "net/http"

// DistServeConfig turns on prefill/decode disaggregation (--serving-strategy DistServe).
type DistServeConfig struct {
	MigrationProtocol string // TCP, RDMA or NVLINK
	LinkType          string // RoCE or IB
	DummyPrefill      bool
}

// registerDistServeRoutes adds the /distserve/* admin routes.
func (s *Server) registerDistServeRoutes() {}

// serveDistServe runs one chat or completion request through a Prefill and a Decode replica.
func (s *Server) serveDistServe(w http.ResponseWriter, r *http.Request, body []byte, f requestFields) {
	writeError(w, r, errorf(http.StatusNotImplemented, "DistServe is not built yet"))
}
