// Package httpapi is the REST API of jitaccess (/api/v1) on net/http: it
// decodes and strictly validates bodies in the shapes of Defender for Cloud's
// JIT API, identifies the caller, calls the jit use cases and writes their
// results or errors in ARM's error shape. It must not depend on any storage,
// queue or Azure SDK package.
package httpapi

import (
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"jitaccess/handler/jit"
)

// DefaultMaxBody is the largest request body accepted.
const DefaultMaxBody = 1 << 20

// Config configures the API.
type Config struct {
	// Local enables local mode's identity: a caller without identity headers
	// is a local administrator, and X-Dev-Principal / X-Dev-Roles act as
	// someone else. Never set it in Azure.
	Local   bool
	MaxBody int64 // DefaultMaxBody when zero
	// TrustedProxies are the direct peers whose X-Forwarded-For is
	// believed (the Functions host, a front door). From anyone else the
	// caller's address is the connection's.
	TrustedProxies []netip.Prefix
	Log            zerolog.Logger
}

// Server serves the API.
type Server struct {
	svc *jit.API
	cfg Config
	mux *http.ServeMux
}

// New returns the API handler for svc.
func New(svc *jit.API, cfg Config) *Server {
	if cfg.MaxBody == 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	s := &Server{svc: svc, cfg: cfg, mux: http.NewServeMux()}
	m := s.mux
	m.HandleFunc("GET /healthz", s.healthz)
	m.HandleFunc("GET /api/v1/policies", s.listPolicies)
	m.HandleFunc("GET /api/v1/policies/{name}", s.getPolicy)
	m.HandleFunc("PUT /api/v1/policies/{name}", s.putPolicy)
	m.HandleFunc("DELETE /api/v1/policies/{name}", s.deletePolicy)
	m.HandleFunc("POST /api/v1/policies/{name}/initiate", s.initiate)
	m.HandleFunc("GET /api/v1/requests", s.listRequests)
	m.HandleFunc("GET /api/v1/requests/{id}", s.getRequest)
	m.HandleFunc("POST /api/v1/requests/{id}/revoke", s.revoke)
	m.HandleFunc("POST /api/v1/requests/{id}/extend", s.extend)
	m.HandleFunc("POST /api/v1/requests/{id}/approve", s.decide(true))
	m.HandleFunc("POST /api/v1/requests/{id}/deny", s.decide(false))
	m.HandleFunc("GET /api/v1/vms", s.listVMs)
	m.HandleFunc("GET /api/v1/me", s.me)
	m.HandleFunc("GET /api/v1/audit", s.audit)
	return s
}

// Handle adds another handler to the server's mux (the portal, the ARM
// simulator in local mode).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() {
		if v := recover(); v != nil {
			s.cfg.Log.Error().Interface("panic", v).Str("path", r.URL.Path).Msg("handler panicked")
			if !rec.wrote {
				writeError(rec, errors.New("panic"))
			}
		}
		s.cfg.Log.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", rec.status).
			Dur("took", time.Since(start)).Msg("http")
	}()
	// Unknown paths and methods answer in the API's error shape.
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.notRouted(rec, r)
		return
	}
	s.mux.ServeHTTP(rec, r)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// notRouted answers 405 with Allow when another method would match the
// path, 404 otherwise.
func (s *Server) notRouted(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "" {
			allowed = append(allowed, m)
		}
	}
	if len(allowed) == 0 {
		writeError(w, &httpError{status: http.StatusNotFound, code: "NotFound", msg: "no such path: " + clip(r.URL.Path)})
		return
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	writeError(w, &httpError{status: http.StatusMethodNotAllowed, code: "MethodNotAllowed",
		msg: r.Method + " is not allowed on " + clip(r.URL.Path) + "; use " + strings.Join(allowed, " or ")})
}

// principal identifies the caller.
func (s *Server) principal(r *http.Request) (jit.Principal, error) {
	addr := s.callerIP(r)
	if s.cfg.Local {
		id := r.Header.Get("X-Dev-Principal")
		if id == "" {
			return jit.Principal{ID: "local-admin", Name: "local administrator", Roles: []string{jit.RoleAdmin}, Address: addr}, nil
		}
		var roles []string
		for _, role := range strings.Split(r.Header.Get("X-Dev-Roles"), ",") {
			if role = strings.TrimSpace(role); role != "" {
				roles = append(roles, role)
			}
		}
		return jit.Principal{ID: id, Name: id, Roles: roles, Address: addr}, nil
	}
	if r.Header.Get("X-Dev-Principal") != "" || r.Header.Get("X-Dev-Roles") != "" {
		return jit.Principal{}, jit.Errorf(jit.EUNAUTHORIZED, "X-Dev-Principal and X-Dev-Roles are accepted in local mode only")
	}
	return parseClientPrincipal(r.Header, addr)
}

// parseClientPrincipal reads App Service Authentication's
// X-MS-CLIENT-PRINCIPAL header (base64 JSON with claims).
func parseClientPrincipal(h http.Header, addr string) (jit.Principal, error) {
	raw := h.Get("X-MS-CLIENT-PRINCIPAL")
	if raw == "" {
		return jit.Principal{}, jit.Errorf(jit.EUNAUTHORIZED, "sign in first: no identity came with the request")
	}
	b, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return jit.Principal{}, jit.Errorf(jit.EUNAUTHORIZED, "the identity header is not valid base64")
	}
	var cp struct {
		Claims []struct {
			Typ string `json:"typ"`
			Val string `json:"val"`
		} `json:"claims"`
		NameTyp string `json:"name_typ"`
		RoleTyp string `json:"role_typ"`
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		return jit.Principal{}, jit.Errorf(jit.EUNAUTHORIZED, "the identity header is not valid JSON")
	}
	p := jit.Principal{ID: h.Get("X-MS-CLIENT-PRINCIPAL-ID"), Name: h.Get("X-MS-CLIENT-PRINCIPAL-NAME"), Address: addr}
	for _, c := range cp.Claims {
		switch {
		case c.Typ == "roles" || cp.RoleTyp != "" && c.Typ == cp.RoleTyp:
			p.Roles = append(p.Roles, c.Val)
		case c.Typ == "http://schemas.microsoft.com/identity/claims/objectidentifier" || c.Typ == "oid":
			if p.ID == "" {
				p.ID = c.Val
			}
		case c.Typ == "groups":
			p.Groups = append(p.Groups, c.Val)
		}
	}
	if p.ID == "" {
		return jit.Principal{}, jit.Errorf(jit.EUNAUTHORIZED, "the identity header names no principal id")
	}
	if oid, ok := jit.CanonicalObjectID(p.ID); ok {
		p.ID = oid // one spelling, so ids compare and filter as equal
	}
	return p, nil
}

// callerIP is the caller's address for "My IP": the connection's peer, or,
// when the peer is a trusted proxy, the nearest untrusted address in
// X-Forwarded-For (proxies append, so it is read from the right).
func (s *Server) callerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return ""
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	peer = peer.Unmap()
	if !s.trusted(peer) {
		return peer.String()
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop := strings.TrimSpace(hops[i])
		if h, _, err := net.SplitHostPort(hop); err == nil {
			hop = h // some proxies append the port
		}
		a, err := netip.ParseAddr(hop)
		if err != nil {
			return peer.String() // a forged or broken header: trust only the peer
		}
		if a = a.Unmap(); !s.trusted(a) {
			return a.String()
		}
	}
	return peer.String()
}

func (s *Server) trusted(a netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// call identifies the caller and writes the error if that fails.
func (s *Server) call(w http.ResponseWriter, r *http.Request) (jit.Principal, bool) {
	if err := refuseCrossSite(r); err != nil {
		writeError(w, err)
		return jit.Principal{}, false
	}
	p, err := s.principal(r)
	if err != nil {
		writeError(w, err)
		return p, false
	}
	if err := s.allowWrite(r, p); err != nil {
		s.fail(w, r, err)
		return p, false
	}
	return p, true
}

// refuseCrossSite refuses a change that another site's page could have made
// with the caller's sign-in cookie: a browser says so in Sec-Fetch-Site, and
// an HTML form can only send the content types below, even with no body
// (approve, deny and revoke need none). Scripts, bots and the portal itself
// are not affected.
func refuseCrossSite(r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return &httpError{status: http.StatusForbidden, code: "CrossSiteRequest",
			msg: "a " + r.Method + " from another site's page is refused: use the portal, or call the API directly"}
	}
	mt, _, _ := strings.Cut(strings.ToLower(r.Header.Get("Content-Type")), ";")
	switch strings.TrimSpace(mt) {
	case "application/x-www-form-urlencoded", "multipart/form-data", "text/plain":
		return &httpError{status: http.StatusUnsupportedMediaType, code: "UnsupportedMediaType",
			msg: "Content-Type " + mt + " is not supported: send application/json, or no body"}
	}
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) listPolicies(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	pg, err := pageOf(r, policyPages)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	pols, err := s.svc.ListPolicies(r.Context(), p)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Policies are few and come ordered by lower-case name; only the
	// page's are judged and sent.
	pols, more := pageByKey(pols, pg, func(pol jit.Policy) string { return strings.ToLower(pol.Name) })
	sts, err := s.svc.PolicyStatuses(r.Context(), pols)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	next := ""
	if more {
		next = s.nextLink(r, pageToken{Kind: pg.rule.kind, ID: strings.ToLower(pols[len(pols)-1].Name)})
	}
	i := 0
	writePage(w, pols, func(pol jit.Policy) policyOut {
		i++
		return policyToOut(pol, sts[i-1])
	}, next)
}

func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	pol, err := s.svc.GetPolicy(r.Context(), p, r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writePolicy(w, r, http.StatusOK, pol)
}

func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	name := r.PathValue("name")
	if err := jit.ValidatePolicyName(name); err != nil {
		s.fail(w, r, err)
		return
	}
	var body policyBody
	if err := decodeStrict(w, r, s.cfg.MaxBody, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	pol, err := body.toPolicy(name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	saved, err := s.svc.PutPolicy(r.Context(), p, pol, unquoteETag(r.Header.Get("If-Match")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writePolicy(w, r, http.StatusOK, saved)
}

func (s *Server) deletePolicy(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	pol, err := s.svc.DeletePolicy(r.Context(), p, r.PathValue("name"), unquoteETag(r.Header.Get("If-Match")))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Accepted: the deny rules are being removed; the policy is gone once
	// they are (a GET then answers 404).
	s.writePolicy(w, r, http.StatusAccepted, pol)
}

// writePolicy answers with the policy and its lockdown as last seen in ARM.
func (s *Server) writePolicy(w http.ResponseWriter, r *http.Request, status int, pol jit.Policy) {
	sts, err := s.svc.PolicyStatuses(r.Context(), []jit.Policy{pol})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("ETag", strconv.Quote(pol.ETag))
	writeJSON(w, status, policyToOut(pol, sts[0]))
}

func (s *Server) initiate(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	name := r.PathValue("name")
	if err := jit.ValidatePolicyName(name); err != nil {
		s.fail(w, r, err)
		return
	}
	var body initiateBody
	if err := decodeStrict(w, r, s.cfg.MaxBody, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	in, err := body.toInput()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	req, err := s.svc.Initiate(r.Context(), p, name, in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/requests/"+req.ID)
	writeJSON(w, http.StatusAccepted, requestToOut(req))
}

func (s *Server) listRequests(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	f := jit.RequestFilter{Policy: q.Get("policy"), Requestor: q.Get("requestor")}
	if v := q.Get("vm"); v != "" {
		id, err := jit.ParseVMID(v)
		if err != nil {
			s.fail(w, r, jit.Errorf(jit.EINVALID, "vm: %s", jit.ErrorMessage(err)))
			return
		}
		f.VM = id.String()
	}
	if v := q.Get("status"); v != "" {
		f.Statuses = strings.Split(v, ",")
	}
	pg, err := pageOf(r, requestPages)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f.Limit, f.After = pg.size+1, pg.position()
	reqs, err := s.svc.ListRequests(r.Context(), p, f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	next := ""
	if len(reqs) > pg.size {
		reqs = reqs[:pg.size]
		last := reqs[len(reqs)-1]
		next = s.nextLink(r, pageToken{Kind: pg.rule.kind, Time: last.StartTime, ID: last.ID})
	}
	writePage(w, reqs, requestToOut, next)
}

func (s *Server) getRequest(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	req, err := s.svc.GetRequest(r.Context(), p, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, requestToOut(req))
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	req, err := s.svc.Revoke(r.Context(), p, r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, requestToOut(req))
}

func (s *Server) extend(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	var body struct {
		EndTimeUtc string `json:"endTimeUtc"`
		Duration   string `json:"duration"`
	}
	if err := decodeStrict(w, r, s.cfg.MaxBody, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	var in jit.ExtendInput
	var err error
	if body.EndTimeUtc != "" {
		if in.End, err = parseTime("endTimeUtc", body.EndTimeUtc); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if body.Duration != "" {
		if in.Duration, err = jit.ParseDuration(body.Duration); err != nil {
			s.fail(w, r, jit.Errorf(jit.EINVALID, "duration: %s", jit.ErrorMessage(err)))
			return
		}
	}
	req, err := s.svc.Extend(r.Context(), p, r.PathValue("id"), in)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, requestToOut(req))
}

// me tells the caller who they are to the service, their roles, and the
// address the service sees ("My IP").
func (s *Server) me(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	roles := p.Roles
	if roles == nil {
		roles = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": p.ID, "name": p.Name, "roles": roles, "address": p.Address,
		"minDuration": jit.FormatDuration(s.svc.MinDuration())})
}

// decide approves or denies a pending request. The body is optional:
// {"comment": "..."}.
func (s *Server) decide(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := s.call(w, r)
		if !ok {
			return
		}
		var body struct {
			Comment string `json:"comment"`
		}
		if r.ContentLength != 0 {
			if err := decodeStrict(w, r, s.cfg.MaxBody, &body); err != nil {
				s.fail(w, r, err)
				return
			}
		}
		var req jit.Request
		var err error
		if approve {
			req, err = s.svc.Approve(r.Context(), p, r.PathValue("id"), body.Comment)
		} else {
			req, err = s.svc.Deny(r.Context(), p, r.PathValue("id"), body.Comment)
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, requestToOut(req))
	}
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	pg, err := pageOf(r, vmPages)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	vms, more, err := s.svc.ListVMsPage(r.Context(), p, jit.VMPage{After: pg.after.ID, Limit: pg.size})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	next := ""
	if more {
		next = s.nextLink(r, pageToken{Kind: pg.rule.kind, ID: strings.ToLower(vms[len(vms)-1].ID)})
	}
	writePage(w, vms, vmToOut, next)
}

// audit streams the audit trail as JSON or CSV without buffering it whole.
func (s *Server) audit(w http.ResponseWriter, r *http.Request) {
	p, ok := s.call(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	var f jit.AuditFilter
	if v := q.Get("vm"); v != "" {
		id, err := jit.ParseVMID(v)
		if err != nil {
			s.fail(w, r, jit.Errorf(jit.EINVALID, "vm: %s", jit.ErrorMessage(err)))
			return
		}
		f.VM = id.String()
	}
	var err error
	if f.From, err = parseTime("from", q.Get("from")); err != nil {
		s.fail(w, r, err)
		return
	}
	if f.To, err = parseTime("to", q.Get("to")); err != nil {
		s.fail(w, r, err)
		return
	}
	format := q.Get("format")
	if format == "" && strings.Contains(r.Header.Get("Accept"), "text/csv") {
		format = "csv"
	}
	rule := auditPages
	if format == "csv" {
		rule = auditCSVPages
	}
	pg, err := pageOf(r, rule)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f.After = pg.position()
	switch format {
	case "", "json":
		f.Limit = pg.size + 1 // one more tells whether a next page exists
		s.streamAuditJSON(w, r, p, f, pg)
	case "csv":
		f.Limit = pg.size
		s.streamAuditCSV(w, r, p, f)
	default:
		s.fail(w, r, jit.Errorf(jit.EINVALID, "format %q is not supported: use json or csv", clip(format)))
	}
}

func (s *Server) streamAuditJSON(w http.ResponseWriter, r *http.Request, p jit.Principal, f jit.AuditFilter, pg page) {
	started := false
	enc := json.NewEncoder(w)
	n, next := 0, ""
	var last jit.AuditEvent
	err := s.svc.ScanAudit(r.Context(), p, f, func(ev jit.AuditEvent) error {
		if n++; n > pg.size {
			next = s.nextLink(r, pageToken{Kind: pg.rule.kind, Time: last.Time, ID: last.ID})
			return nil
		}
		last = ev
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{"value":[`))
		} else {
			_, _ = w.Write([]byte(","))
		}
		return enc.Encode(auditToOut(ev))
	})
	if err != nil && !started {
		s.fail(w, r, err)
		return
	}
	if err != nil {
		// Headers are gone: end the body so the client sees it is cut short.
		s.cfg.Log.Error().Err(err).Msg("audit stream broke off")
		return
	}
	if !started {
		writeJSON(w, http.StatusOK, map[string]any{"value": []any{}})
		return
	}
	if next != "" {
		b, _ := json.Marshal(next)
		_, _ = w.Write([]byte(`],"nextLink":` + string(b) + "}\n"))
		return
	}
	_, _ = w.Write([]byte("]}\n"))
}

// csvHeader lists the CSV export's columns.
var csvHeader = []string{"time_utc", "action", "result", "actor", "policy", "request", "vm", "nsg", "protocol", "ports", "sources", "detail", "id"}

func (s *Server) streamAuditCSV(w http.ResponseWriter, r *http.Request, p jit.Principal, f jit.AuditFilter) {
	started := false
	cw := csv.NewWriter(w)
	start := func() {
		started = true
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", `attachment; filename="jitaccess-audit.csv"`)
		w.WriteHeader(http.StatusOK)
		_ = cw.Write(csvHeader)
	}
	err := s.svc.ScanAudit(r.Context(), p, f, func(ev jit.AuditEvent) error {
		if !started {
			start()
		}
		ports := make([]string, len(ev.Ports))
		for i, n := range ev.Ports {
			ports[i] = strconv.Itoa(n)
		}
		row := []string{ev.Time.UTC().Format(time.RFC3339Nano), ev.Action, ev.Result, ev.Actor, ev.Policy, ev.Request,
			ev.VM, ev.NSG, ev.Protocol, strings.Join(ports, " "), strings.Join(ev.Sources, " "), ev.Detail, ev.ID}
		for i := range row {
			row[i] = neutraliseCell(row[i])
		}
		return cw.Write(row)
	})
	if err != nil && !started {
		s.fail(w, r, err)
		return
	}
	if !started {
		start()
	}
	cw.Flush()
	if err != nil {
		s.cfg.Log.Error().Err(err).Msg("audit CSV stream broke off")
	}
}

// neutraliseCell stops a spreadsheet from reading a cell as a formula.
func neutraliseCell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

func parseTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, jit.Errorf(jit.EINVALID, "%s: %q is not a date and time such as 2026-01-02T15:04:05Z", name, clip(v))
	}
	return t, nil
}

func unquoteETag(v string) string {
	v = strings.TrimPrefix(strings.TrimSpace(v), "W/")
	if u, err := strconv.Unquote(v); err == nil {
		return u
	}
	return v
}

func itoa(n int) string { return strconv.Itoa(n) }
