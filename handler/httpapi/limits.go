package httpapi

import (
	"net/http"

	"jitaccess/handler/jit"
)

// allowWrite spends one change of the caller's budget on a change
// (anything but GET, HEAD, OPTIONS); an exhausted budget is 429 with
// Retry-After. It is the one place both modes check it.
func (s *Server) allowWrite(r *http.Request, p jit.Principal) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	return s.svc.AllowWrite(p)
}
