package http

import "github.com/gorilla/mux"

// Router exposes the server's router to the external tests, which walk the routes it registers.
func (s *Server) Router() *mux.Router { return s.router }
