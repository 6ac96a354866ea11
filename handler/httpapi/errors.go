package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"jitaccess/handler/jit"
)

// httpError is an error that only the HTTP layer knows (413, 415, 405).
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

var statusOf = map[string]struct {
	status int
	code   string
}{
	jit.EINVALID:      {http.StatusBadRequest, "BadRequest"},
	jit.ENOTFOUND:     {http.StatusNotFound, "NotFound"},
	jit.EFORBIDDEN:    {http.StatusForbidden, "Forbidden"},
	jit.EUNAUTHORIZED: {http.StatusUnauthorized, "Unauthorized"},
	jit.ECONFLICT:     {http.StatusConflict, "Conflict"},
	jit.EUNAVAILABLE:  {http.StatusServiceUnavailable, "ServiceUnavailable"},
	jit.ETOOMANY:      {http.StatusTooManyRequests, "TooManyRequests"},
	jit.EINTERNAL:     {http.StatusInternalServerError, "InternalServerError"},
}

// writeError writes err in ARM's error shape. Internal details never reach
// the caller.
func writeError(w http.ResponseWriter, err error) {
	var body errorBody
	status := http.StatusInternalServerError
	var he *httpError
	if errors.As(err, &he) {
		status, body.Error.Code, body.Error.Message = he.status, he.code, he.msg
	} else {
		m := statusOf[jit.ErrorCode(err)]
		status, body.Error.Code, body.Error.Message = m.status, m.code, jit.ErrorMessage(err)
	}
	if wait, ok := jit.RetryAfter(err); ok {
		w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
	}
	writeJSON(w, status, body)
}

// fail logs err (with its internal cause) and writes it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := jit.ErrorCode(err)
	var he *httpError
	if errors.As(err, &he) {
		code = he.code
	}
	ev := s.cfg.Log.Info()
	if code == jit.EINTERNAL || code == jit.EUNAVAILABLE {
		ev = s.cfg.Log.Error()
	}
	ev.Err(err).Str("method", r.Method).Str("path", r.URL.Path).Str("code", code).Msg("request failed")
	writeError(w, err)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"InternalServerError","message":"internal error"}}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
