package armsim

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// Options configure a Server. The zero value serves the demo estate at the
// root path with no latency and no faults.
type Options struct {
	// PathPrefix is where the server is mounted (e.g. "/_arm" behind
	// http.StripPrefix); it goes into the absolute URLs the server hands out
	// (polling URLs, nextLink).
	PathPrefix string
	// PageSize is the number of items per list page; more items come through
	// nextLink. Default 1000.
	PageSize int
	// ReadLatency and WriteLatency delay every read and write (not polls).
	ReadLatency, WriteLatency time.Duration
	// InProgressPolls is how many polls of a new operation answer
	// InProgress before its final status.
	InProgressPolls int
	// PollRetryAfter is sent with InProgress answers as Retry-After-Ms (and
	// Retry-After, rounded up to seconds) so pollers come back soon. Default
	// 10ms; negative sends no header.
	PollRetryAfter time.Duration
	// Intercept, when set, is asked about every call except polls after
	// FailNext and before chaos; it may return a fault, and it may change
	// the estate (AddRule) to simulate another writer.
	Intercept func(r *http.Request, c Call) *Fault
	// OnChange is called after every successful write, outside the lock.
	OnChange func(Change)
	// Empty starts without resources instead of the demo estate.
	Empty bool
	// Azure, when set, makes the simulator behave as ARM does under load:
	// writes that take time, one operation at a time per NSG, and the
	// subscription's throttling budgets.
	Azure *Azure
}

// Call describes one request the server received.
type Call struct {
	Method string // GET, LIST, PUT, DELETE or POLL
	Type   string // short resource type: virtualMachines, networkSecurityGroups, securityRules, operations...
	ID     string // the request path without the prefix
}

// Kind is the counter name of the call, e.g. "PUT securityRules".
func (c Call) Kind() string { return c.Method + " " + c.Type }

// Write reports whether the call changes state.
func (c Call) Write() bool { return c.Method == http.MethodPut || c.Method == http.MethodDelete }

// Change is one successful write, for event hooks.
type Change struct {
	ID        string // ARM id of the written resource
	Type      string // ARM type, e.g. Microsoft.Network/networkSecurityGroups/securityRules
	Operation string // "write" or "delete"
	Etag      string // new etag of the NSG
	// Caller is the client (appid, else oid) of the bearer token that made
	// the change, as Event Grid's claims name it; empty when none.
	Caller string
}

// Server is the simulator; it is safe for concurrent use.
type Server struct {
	mu       sync.Mutex
	saveMu   sync.Mutex
	opts     Options
	st       state
	cache    saveCache     // what Save last wrote of each resource; under mu
	changes  atomic.Uint64 // successful writes so far
	saved    saveState     // what the files Save writes hold; under saveMu
	saveBuf  bytes.Buffer  // Save's buffer, reused; under saveMu
	ops      map[string]*operation
	opIDs    []string // the ids of the last keptOperations operations, by opSeq modulo keptOperations
	opSeq    uint64
	etagSeq  uint64
	stats    CallStats
	failNext []*pendingFault
	chaos    *chaosState
	azure    *azureState // nil unless Options.Azure
}

// New returns a Server loaded with the demo estate (unless opts.Empty).
func New(opts Options) *Server {
	if opts.PageSize <= 0 {
		opts.PageSize = 1000
	}
	if opts.PollRetryAfter == 0 {
		opts.PollRetryAfter = 10 * time.Millisecond
	}
	opts.PathPrefix = strings.TrimSuffix(opts.PathPrefix, "/")
	s := &Server{opts: opts, ops: map[string]*operation{}, stats: CallStats{ByKind: map[string]int{}}, st: newState()}
	if opts.Azure != nil {
		s.azure = newAzureState(*opts.Azure)
	}
	if !opts.Empty {
		st, err := parseEstate(bytes.NewReader(DemoEstate), s.newEtag)
		if err != nil {
			panic("armsim: embedded demo estate: " + err.Error())
		}
		s.st = st
	}
	return s
}

// newEtag returns a fresh etag; callers hold the lock. Counter-based so runs
// are reproducible.
func (s *Server) newEtag() string {
	s.etagSeq++
	return fmt.Sprintf(`W/"00000000-0000-4000-8000-%012x"`, s.etagSeq)
}

// route is a parsed ARM path. Type segments are lower-cased; names keep the
// request's spelling.
type route struct {
	sub, rg         string
	ns, typ, name   string
	child, childNm  string
	op, opID, opLoc string // operation polls
}

// Canonical spellings of the type segments the simulator serves.
var shortType = map[string]string{
	"virtualmachines":       "virtualMachines",
	"networkinterfaces":     "networkInterfaces",
	"virtualnetworks":       "virtualNetworks",
	"subnets":               "subnets",
	"networksecuritygroups": "networkSecurityGroups",
	"securityrules":         "securityRules",
	"defaultsecurityrules":  "defaultSecurityRules",
}

func notFoundPath(path string) *armError {
	return &armError{Status: 404, Code: "NotFound", Message: "No HTTP resource was found that matches the request URI '" + path + "'."}
}

func parseRoute(path string) (route, *armError) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	var rt route
	if len(segs) < 4 || !strings.EqualFold(segs[0], "subscriptions") {
		return rt, notFoundPath(path)
	}
	rt.sub, segs = segs[1], segs[2:]
	if strings.EqualFold(segs[0], "resourceGroups") {
		if len(segs) < 3 {
			return rt, notFoundPath(path)
		}
		rt.rg, segs = segs[1], segs[2:]
	}
	if len(segs) < 3 || !strings.EqualFold(segs[0], "providers") {
		return rt, notFoundPath(path)
	}
	rt.ns, segs = strings.ToLower(segs[1]), segs[2:]
	if rt.rg == "" && strings.EqualFold(segs[0], "locations") && len(segs) == 4 {
		op := strings.ToLower(segs[2])
		if op != "operations" && op != "operationresults" {
			return rt, notFoundPath(path)
		}
		rt.opLoc, rt.op, rt.opID = segs[1], op, segs[3]
		return rt, nil
	}
	if len(segs) > 4 || (rt.rg == "" && len(segs) > 1) {
		return rt, notFoundPath(path)
	}
	rt.typ = strings.ToLower(segs[0])
	if len(segs) > 1 {
		rt.name = segs[1]
	}
	if len(segs) > 2 {
		rt.child = strings.ToLower(segs[2])
	}
	if len(segs) > 3 {
		rt.childNm = segs[3]
	}
	known := map[string]bool{
		"microsoft.compute/virtualmachines":       true,
		"microsoft.network/networkinterfaces":     true,
		"microsoft.network/virtualnetworks":       true,
		"microsoft.network/networksecuritygroups": true,
	}
	if !known[rt.ns+"/"+rt.typ] || (rt.child != "" && shortType[rt.child] == "") {
		t := rt.typ
		if rt.child != "" {
			t += "/" + rt.child
		}
		return rt, &armError{Status: 404, Code: "InvalidResourceType", Message: fmt.Sprintf("The resource type '%s' could not be found in the namespace '%s'.", t, rt.ns)}
	}
	return rt, nil
}

func (rt route) call(method, path string) Call {
	if rt.op == "operationresults" {
		return Call{Method: "POLL", Type: "operationResults", ID: path}
	}
	if rt.op != "" {
		return Call{Method: "POLL", Type: "operations", ID: path}
	}
	t, list := rt.typ, rt.name == ""
	if rt.child != "" {
		t, list = rt.child, rt.childNm == ""
	}
	if method == http.MethodGet && list {
		method = "LIST"
	}
	return Call{Method: method, Type: shortType[t], ID: path}
}

// ServeHTTP serves ARM's paths for the resources in the estate.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	apiVersion := r.URL.Query().Get("api-version")
	if apiVersion == "" {
		writeError(w, &armError{Status: 400, Code: "MissingApiVersionParameter", Message: "The api-version query parameter (?api-version=) is required for all requests."})
		return
	}
	rt, aerr := parseRoute(r.URL.Path)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if r.Header.Get(ObserverHeader) != "" && r.Method == http.MethodGet && rt.op == "" {
		// A measuring tool's look at the estate: not ARM traffic.
		s.dispatch(w, r, rt, nil)
		return
	}
	call := rt.call(r.Method, r.URL.Path)
	s.count(call)
	if !s.throttle(w, r, rt) {
		return
	}
	if rt.op != "" {
		s.servePoll(w, r, rt)
		return
	}
	s.mu.Lock()
	delay := s.opts.ReadLatency
	if call.Write() {
		delay = s.opts.WriteLatency
	}
	s.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	fault := s.pickFault(r, call)
	if fault != nil && !fault.LRO {
		s.countFault()
		writeFault(w, fault)
		return
	}
	if fault != nil && !call.Write() {
		fault = nil
	}
	if fault != nil {
		s.countFault()
	}
	s.dispatch(w, r, rt, fault)
}

func (s *Server) dispatch(w http.ResponseWriter, r *http.Request, rt route, lro *Fault) {
	vmWrite := rt.typ == "virtualmachines" && rt.child == "" && rt.name != "" && (r.Method == http.MethodPatch || r.Method == http.MethodDelete)
	if r.Method != http.MethodGet && rt.typ != "networksecuritygroups" && !vmWrite {
		writeError(w, methodNotAllowed(r))
		return
	}
	switch {
	case vmWrite && r.Method == http.MethodPatch:
		s.patchVM(w, r, rt)
	case vmWrite:
		s.deleteVM(w, r, rt)
	case rt.typ == "virtualmachines" && rt.child == "":
		serveRead(s, w, r, rt, typeVM, kindVM, func(st *state) map[string]*armcompute.VirtualMachine { return st.vms })
	case rt.typ == "networkinterfaces" && rt.child == "":
		serveRead(s, w, r, rt, typeNIC, kindNIC, func(st *state) map[string]*armnetwork.Interface { return st.nics })
	case rt.typ == "virtualnetworks" && rt.child == "":
		serveRead(s, w, r, rt, typeVNet, kindVNet, func(st *state) map[string]*armnetwork.VirtualNetwork { return st.vnets })
	case rt.typ == "virtualnetworks" && rt.child == "subnets":
		s.serveSubnets(w, r, rt)
	case rt.typ != "networksecuritygroups":
		writeError(w, &armError{Status: 404, Code: "InvalidResourceType", Message: fmt.Sprintf("The resource type '%s/%s' could not be found in the namespace '%s'.", rt.typ, rt.child, rt.ns)})
	case rt.child == "" && r.Method == http.MethodGet:
		serveRead(s, w, r, rt, typeNSG, kindNSG, func(st *state) map[string]*armnetwork.SecurityGroup { return st.nsgs })
	case rt.child == "" && rt.name != "" && r.Method == http.MethodPut:
		s.putNSG(w, r, rt, lro)
	case rt.child == "" && rt.name != "" && r.Method == http.MethodDelete:
		s.deleteNSG(w, r, rt, lro)
	case (rt.child == "securityrules" || rt.child == "defaultsecurityrules") && r.Method == http.MethodGet:
		s.serveRules(w, r, rt)
	case rt.child == "securityrules" && rt.childNm != "" && r.Method == http.MethodPut:
		s.putRule(w, r, rt, lro)
	case rt.child == "securityrules" && rt.childNm != "" && r.Method == http.MethodDelete:
		s.deleteRule(w, r, rt, lro)
	default:
		writeError(w, methodNotAllowed(r))
	}
}

func methodNotAllowed(r *http.Request) *armError {
	return &armError{Status: 405, Code: "MethodNotAllowed", Message: "The requested resource does not support http method '" + r.Method + "'."}
}

// checkScope answers 404 for an unknown subscription or resource group and
// returns the resource group's canonical name.
func (s *Server) checkScope(rt route) (string, *armError) {
	if _, ok := s.st.subs[key(rt.sub)]; !ok {
		return "", &armError{Status: 404, Code: "SubscriptionNotFound", Message: fmt.Sprintf("The subscription '%s' could not be found.", rt.sub)}
	}
	if rt.rg == "" {
		return "", nil
	}
	rg, ok := s.st.rgs[key(rgID(rt.sub, rt.rg))]
	if !ok {
		return "", &armError{Status: 404, Code: "ResourceGroupNotFound", Message: fmt.Sprintf("Resource group '%s' could not be found.", rt.rg)}
	}
	return rg, nil
}

func resourceNotFound(armType, name, rg string) *armError {
	return &armError{Status: 404, Code: "ResourceNotFound", Message: fmt.Sprintf("The Resource '%s/%s' under resource group '%s' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix", armType, name, rg)}
}

func (rt route) id(armType string) string {
	return rgID(rt.sub, rt.rg) + "/providers/" + armType + "/" + rt.name
}

// serveRead answers GET of one top-level resource or a list by subscription
// or resource group, from the resources coll returns of the state.
func serveRead[T any](s *Server, w http.ResponseWriter, r *http.Request, rt route, armType string, kind resourceKind, coll func(*state) map[string]*T) {
	s.mu.Lock()
	rg, aerr := s.checkScope(rt)
	if aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	m := coll(&s.st)
	if rt.name != "" {
		k := key(rt.id(armType))
		v, ok := m[k]
		var b []byte
		var err error
		if ok {
			b, err = s.resourceJSONLocked(resourceKey{kind, k}, v)
			if kind == kindNSG && err == nil {
				b = s.inProgressJSON(k, b)
			}
		}
		s.mu.Unlock()
		switch {
		case !ok:
			writeError(w, resourceNotFound(armType, rt.name, rg))
		case err != nil:
			writeError(w, &armError{Status: 500, Code: "InternalServerError", Message: err.Error()})
		default:
			writeJSON(w, http.StatusOK, b)
		}
		return
	}
	prefix := key("/subscriptions/"+rt.sub) + "/"
	if rt.rg != "" {
		prefix = key(rgID(rt.sub, rt.rg)) + "/"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	s.writeList(w, r, len(keys), func(i int) ([]byte, error) {
		b, err := s.resourceJSONLocked(resourceKey{kind, keys[i]}, m[keys[i]])
		if kind == kindNSG && err == nil {
			b = s.inProgressJSON(keys[i], b)
		}
		return b, err
	})
}

func (s *Server) serveSubnets(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	rg, aerr := s.checkScope(rt)
	if aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	vnet := s.st.vnets[key(rt.id(typeVNet))]
	if vnet == nil {
		s.mu.Unlock()
		writeError(w, resourceNotFound(typeVNet, rt.name, rg))
		return
	}
	var items []*armnetwork.Subnet
	for _, sn := range vnet.Properties.Subnets {
		if rt.childNm == "" {
			items = append(items, sn)
		} else if strings.EqualFold(deref(sn.Name), rt.childNm) {
			b, err := json.Marshal(sn)
			s.mu.Unlock()
			if err != nil {
				writeError(w, &armError{Status: 500, Code: "InternalServerError", Message: err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, b)
			return
		}
	}
	if rt.childNm != "" {
		s.mu.Unlock()
		writeError(w, &armError{Status: 404, Code: "NotFound", Message: fmt.Sprintf("Resource %s/subnets/%s not found.", rt.id(typeVNet), rt.childNm)})
		return
	}
	s.writeList(w, r, len(items), marshalItem(items))
}

func (s *Server) serveRules(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	nsg, _, aerr := s.nsgFor(rt)
	if aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	rules := nsg.Properties.SecurityRules
	if rt.child == "defaultsecurityrules" {
		rules = nsg.Properties.DefaultSecurityRules
	}
	if rt.childNm == "" {
		s.writeList(w, r, len(rules), marshalItem(rules))
		return
	}
	for _, rule := range rules {
		if strings.EqualFold(deref(rule.Name), rt.childNm) {
			b, err := json.Marshal(rule)
			s.mu.Unlock()
			if err != nil {
				writeError(w, &armError{Status: 500, Code: "InternalServerError", Message: err.Error()})
				return
			}
			writeJSON(w, http.StatusOK, b)
			return
		}
	}
	s.mu.Unlock()
	writeError(w, ruleNotFound(deref(nsg.ID), rt.child, rt.childNm))
}

func ruleNotFound(nsgID, child, name string) *armError {
	return &armError{Status: 404, Code: "NotFound", Message: fmt.Sprintf("Resource %s/%s/%s not found.", nsgID, shortType[child], name)}
}

// nsgFor returns the NSG a route names and its key in the state; callers
// hold the lock.
func (s *Server) nsgFor(rt route) (*armnetwork.SecurityGroup, string, *armError) {
	rg, aerr := s.checkScope(rt)
	if aerr != nil {
		return nil, "", aerr
	}
	k := key(rt.id(typeNSG))
	nsg := s.st.nsgs[k]
	if nsg == nil {
		return nil, "", resourceNotFound(typeNSG, rt.name, rg)
	}
	return nsg, k, nil
}

// writeList answers one page of a list of n items, each item's JSON from
// itemJSON; called with the lock held, it releases it.
func (s *Server) writeList(w http.ResponseWriter, r *http.Request, n int, itemJSON func(i int) ([]byte, error)) {
	skip, _ := strconv.Atoi(r.URL.Query().Get("$skiptoken"))
	if skip < 0 || skip > n {
		skip = n
	}
	end := min(skip+s.opts.PageSize, n)
	page := make([][]byte, 0, end-skip)
	size := 0
	for i := skip; i < end; i++ {
		b, err := itemJSON(i)
		if err != nil {
			s.mu.Unlock()
			writeError(w, &armError{Status: 500, Code: "InternalServerError", Message: err.Error()})
			return
		}
		page = append(page, b)
		size += len(b) + 1
	}
	var buf bytes.Buffer
	buf.Grow(size + 1024) // a page of a large estate is megabytes: no regrowing
	buf.WriteString(`{"value":[`)
	for i, b := range page {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(b)
	}
	buf.WriteByte(']')
	if end < n {
		q := url.Values{}
		q.Set("api-version", r.URL.Query().Get("api-version"))
		q.Set("$skiptoken", strconv.Itoa(end))
		next, _ := json.Marshal(s.baseURL(r) + r.URL.Path + "?" + q.Encode()) // a string always marshals
		buf.WriteString(`,"nextLink":`)
		buf.Write(next)
	}
	buf.WriteByte('}')
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, buf.Bytes())
}

// marshalItem is writeList's itemJSON for items marshalled as they are.
func marshalItem[T any](items []T) func(int) ([]byte, error) {
	return func(i int) ([]byte, error) { return json.Marshal(items[i]) }
}

// baseURL is the absolute URL the server is reachable at, prefix included;
// polling URLs must be absolute for azcore's pollers.
func (s *Server) baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + s.opts.PathPrefix
}

func readBody(r *http.Request, v any) *armError {
	b, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		return &armError{Status: 400, Code: "InvalidRequestContent", Message: "The request content could not be read: " + err.Error()}
	}
	if err := json.Unmarshal(b, v); err != nil {
		return &armError{Status: 400, Code: "InvalidRequestContent", Message: "The request content was invalid and could not be deserialized: " + err.Error()}
	}
	return nil
}

// checkIfMatch applies If-Match / If-None-Match against the current etag
// ("" when the resource does not exist).
func checkIfMatch(r *http.Request, current string) *armError {
	if m := r.Header.Get("If-Match"); m != "" && (current == "" || (m != "*" && m != current)) {
		return &armError{Status: 412, Code: "PreconditionFailed", Message: "The condition specified using HTTP conditional header(s) is not met."}
	}
	if m := r.Header.Get("If-None-Match"); m == "*" && current != "" {
		return &armError{Status: 412, Code: "PreconditionFailed", Message: "The condition specified using HTTP conditional header(s) is not met."}
	}
	return nil
}

func (s *Server) putRule(w http.ResponseWriter, r *http.Request, rt route, lro *Fault) {
	var in armnetwork.SecurityRule
	if aerr := readBody(r, &in); aerr != nil {
		writeError(w, aerr)
		return
	}
	s.mu.Lock()
	nsg, k, aerr := s.nsgFor(rt)
	if aerr == nil {
		aerr = validateRule(rt.childNm, in.Properties)
	}
	if aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	nsgID := deref(nsg.ID)
	rules := nsg.Properties.SecurityRules
	idx, name, current := -1, rt.childNm, ""
	for i, rule := range rules {
		if strings.EqualFold(deref(rule.Name), rt.childNm) {
			idx, name, current = i, deref(rule.Name), deref(rule.Etag)
		}
	}
	if aerr := checkIfMatch(r, current); aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	if s.busyLocked(w, k, nsgID) {
		s.mu.Unlock()
		return
	}
	tag := s.newEtag()
	stored := storedRule(nsgID, name, in.Properties, tag)
	next := append([]*armnetwork.SecurityRule{}, rules...)
	status := http.StatusCreated
	if idx >= 0 {
		next[idx], status = stored, http.StatusOK
	} else {
		next = append(next, stored)
	}
	if aerr := checkRuleSet(next); aerr != nil {
		if aerr.Code == "SecurityRuleConflict" {
			aerr = s.conflictFor(next, stored)
		}
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	if lro == nil {
		nsg.Properties.SecurityRules = next
		nsg.Etag = to.Ptr(tag)
		s.markChangedLocked(kindNSG, k)
	}
	asyncURL, _ := s.newOperation(r, rt.sub, deref(nsg.Location), lro, s.startOperationLocked(k))
	answer := *stored
	props := *stored.Properties
	props.ProvisioningState = to.Ptr(armnetwork.ProvisioningStateUpdating)
	answer.Properties = &props
	b, err := json.Marshal(&answer)
	s.mu.Unlock()
	if err != nil {
		writeError(w, &armError{Status: 500, Code: "InternalServerError", Message: err.Error()})
		return
	}
	w.Header().Set("Azure-AsyncOperation", asyncURL)
	writeJSON(w, status, b)
	if lro == nil {
		s.changed(Change{ID: deref(stored.ID), Type: typeRule, Operation: "write", Etag: tag, Caller: callerOf(r)})
	}
}

// conflictFor names the new rule and the rule it clashes with, as ARM does.
func (s *Server) conflictFor(rules []*armnetwork.SecurityRule, rule *armnetwork.SecurityRule) *armError {
	for _, other := range rules {
		if other != rule && *other.Properties.Direction == *rule.Properties.Direction && *other.Properties.Priority == *rule.Properties.Priority {
			return conflict(deref(rule.Name), deref(other.Name))
		}
	}
	return checkRuleSet(rules)
}

func (s *Server) deleteRule(w http.ResponseWriter, r *http.Request, rt route, lro *Fault) {
	s.mu.Lock()
	nsg, k, aerr := s.nsgFor(rt)
	if aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	idx := -1
	for i, rule := range nsg.Properties.SecurityRules {
		if strings.EqualFold(deref(rule.Name), rt.childNm) {
			idx = i
		}
	}
	if idx < 0 {
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	ruleID := deref(nsg.Properties.SecurityRules[idx].ID)
	if aerr := checkIfMatch(r, deref(nsg.Properties.SecurityRules[idx].Etag)); aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	if s.busyLocked(w, k, deref(nsg.ID)) {
		s.mu.Unlock()
		return
	}
	tag := s.newEtag()
	if lro == nil {
		rules := nsg.Properties.SecurityRules
		nsg.Properties.SecurityRules = append(append([]*armnetwork.SecurityRule{}, rules[:idx]...), rules[idx+1:]...)
		nsg.Etag = to.Ptr(tag)
		s.markChangedLocked(kindNSG, k)
	}
	asyncURL, locURL := s.newOperation(r, rt.sub, deref(nsg.Location), lro, s.startOperationLocked(k))
	s.mu.Unlock()
	w.Header().Set("Azure-AsyncOperation", asyncURL)
	w.Header().Set("Location", locURL)
	w.WriteHeader(http.StatusAccepted)
	if lro == nil {
		s.changed(Change{ID: ruleID, Type: typeRule, Operation: "delete", Etag: tag, Caller: callerOf(r)})
	}
}

// putNSG replaces an NSG's writable parts (tags, rules) or creates it, so
// people and tests can hand-edit an NSG the way ARM templates do.
func (s *Server) putNSG(w http.ResponseWriter, r *http.Request, rt route, lro *Fault) {
	var in armnetwork.SecurityGroup
	if aerr := readBody(r, &in); aerr != nil {
		writeError(w, aerr)
		return
	}
	s.mu.Lock()
	rg, aerr := s.checkScope(rt)
	if aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	id := rgID(rt.sub, rg) + "/providers/" + typeNSG + "/" + rt.name
	k := key(id)
	old := s.st.nsgs[k]
	current := ""
	if old != nil {
		current, id = deref(old.Etag), deref(old.ID)
	}
	if aerr := checkIfMatch(r, current); aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	// A PUT replaces the resource: what it leaves out is not kept.
	loc := deref(in.Location)
	if loc == "" {
		s.mu.Unlock()
		writeError(w, badRequest("LocationRequired", "The location property is required for this definition."))
		return
	}
	if old != nil && !strings.EqualFold(normLocation(loc), normLocation(deref(old.Location))) {
		s.mu.Unlock()
		writeError(w, badRequest("InvalidResourceLocation", "The resource '%s' already exists in location '%s' in resource group '%s'. A resource with the same name cannot be created in location '%s'. Please select a new resource name.", rt.name, deref(old.Location), rg, loc))
		return
	}
	if old != nil {
		loc = deref(old.Location)
	}
	if s.busyLocked(w, k, id) {
		s.mu.Unlock()
		return
	}
	tag := s.newEtag()
	nsg := &armnetwork.SecurityGroup{
		ID: to.Ptr(id), Name: to.Ptr(id[strings.LastIndex(id, "/")+1:]), Type: to.Ptr(typeNSG), Location: to.Ptr(loc), Etag: to.Ptr(tag), Tags: in.Tags,
		Properties: &armnetwork.SecurityGroupPropertiesFormat{
			ProvisioningState:    to.Ptr(armnetwork.ProvisioningStateSucceeded),
			ResourceGUID:         to.Ptr(guidFrom(id)),
			SecurityRules:        []*armnetwork.SecurityRule{},
			DefaultSecurityRules: defaultRules(id, tag),
		},
	}
	if old != nil {
		p := *old.Properties
		p.SecurityRules = []*armnetwork.SecurityRule{}
		nsg.Properties = &p
	}
	oldRules := map[string]*armnetwork.SecurityRule{}
	if old != nil {
		for _, rule := range old.Properties.SecurityRules {
			oldRules[key(deref(rule.Name))] = rule
		}
	}
	if in.Properties != nil {
		for _, rule := range in.Properties.SecurityRules {
			if rule == nil || rule.Name == nil {
				s.mu.Unlock()
				writeError(w, badRequest("InvalidRequestFormat", "A security rule has no name."))
				return
			}
			if aerr := validateRule(*rule.Name, rule.Properties); aerr != nil {
				s.mu.Unlock()
				writeError(w, aerr)
				return
			}
			stored := storedRule(id, *rule.Name, rule.Properties, tag)
			// An unchanged rule keeps its etag, so readers can tell what a
			// hand edit really touched.
			if prev := oldRules[key(*rule.Name)]; prev != nil && reflect.DeepEqual(prev.Properties, stored.Properties) {
				stored = prev
			}
			nsg.Properties.SecurityRules = append(nsg.Properties.SecurityRules, stored)
		}
	}
	nsg.Properties.FlushConnection = to.Ptr(in.Properties != nil && in.Properties.FlushConnection != nil && *in.Properties.FlushConnection)
	if aerr := checkRuleSet(nsg.Properties.SecurityRules); aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	status := http.StatusCreated
	if old != nil {
		status = http.StatusOK
	}
	if lro == nil {
		s.st.nsgs[k] = nsg
		s.markChangedLocked(kindNSG, k)
		if old == nil {
			s.st.link()
			s.cache = saveCache{} // link changes back-references in place: save a snapshot
		}
	}
	asyncURL, _ := s.newOperation(r, rt.sub, loc, lro, s.startOperationLocked(k))
	answer := *nsg
	props := *nsg.Properties
	props.ProvisioningState = to.Ptr(armnetwork.ProvisioningStateUpdating)
	answer.Properties = &props
	b, err := json.Marshal(&answer)
	s.mu.Unlock()
	if err != nil {
		writeError(w, &armError{Status: 500, Code: "InternalServerError", Message: err.Error()})
		return
	}
	w.Header().Set("Azure-AsyncOperation", asyncURL)
	writeJSON(w, status, b)
	if lro == nil {
		s.changed(Change{ID: id, Type: typeNSG, Operation: "write", Etag: tag, Caller: callerOf(r)})
	}
}

func (s *Server) deleteNSG(w http.ResponseWriter, r *http.Request, rt route, lro *Fault) {
	s.mu.Lock()
	nsg, k, aerr := s.nsgFor(rt)
	if aerr != nil {
		s.mu.Unlock()
		if aerr.Code == "ResourceNotFound" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeError(w, aerr)
		return
	}
	if len(nsg.Properties.NetworkInterfaces) > 0 || len(nsg.Properties.Subnets) > 0 {
		s.mu.Unlock()
		writeError(w, badRequest("InUseNetworkSecurityGroupCannotBeDeleted", "Network security group %s cannot be deleted because it is in use by a network interface or subnet.", deref(nsg.ID)))
		return
	}
	if aerr := checkIfMatch(r, deref(nsg.Etag)); aerr != nil {
		s.mu.Unlock()
		writeError(w, aerr)
		return
	}
	if s.busyLocked(w, k, deref(nsg.ID)) {
		s.mu.Unlock()
		return
	}
	id := deref(nsg.ID)
	if lro == nil {
		delete(s.st.nsgs, k)
		s.markChangedLocked(kindNSG, k)
	}
	asyncURL, locURL := s.newOperation(r, rt.sub, deref(nsg.Location), lro, s.startOperationLocked(k))
	s.mu.Unlock()
	w.Header().Set("Azure-AsyncOperation", asyncURL)
	w.Header().Set("Location", locURL)
	w.WriteHeader(http.StatusAccepted)
	if lro == nil {
		s.changed(Change{ID: id, Type: typeNSG, Operation: "delete", Caller: callerOf(r)})
	}
}

// callerOf reads the client of a request's bearer token (appid, else oid),
// as Event Grid reports it in an event's claims. The simulator checks no
// signature: it only tells callers apart.
func callerOf(r *http.Request) string {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var claims struct {
		AppID string `json:"appid"`
		OID   string `json:"oid"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return ""
	}
	return cmp.Or(claims.AppID, claims.OID)
}

func (s *Server) changed(c Change) {
	s.changes.Add(1)
	if s.opts.OnChange != nil {
		s.opts.OnChange(c)
	}
}

// operation is a long-running operation's state as its polls see it.
type operation struct {
	remaining int       // InProgress answers left
	doneAt    time.Time // InProgress until then (Options.Azure)
	fault     *Fault    // non-nil: ends Failed
}

// Operations are forgotten after this many newer ones, so a long local run
// does not grow without bound; pollers finish long before.
const keptOperations = 4096

// newOperation registers an operation and returns its Azure-AsyncOperation
// and Location URLs; callers hold the lock.
func (s *Server) newOperation(r *http.Request, sub, location string, lro *Fault, doneAt time.Time) (asyncURL, locURL string) {
	s.opSeq++
	id := fmt.Sprintf("00000000-0000-4000-9000-%012x", s.opSeq)
	if s.opIDs == nil {
		s.opIDs = make([]string, keptOperations)
	}
	slot := s.opSeq % keptOperations
	delete(s.ops, s.opIDs[slot]) // keptOperations operations older than this one
	s.opIDs[slot] = id
	s.ops[id] = &operation{remaining: s.opts.InProgressPolls, fault: lro, doneAt: doneAt}
	s.stats.Operations++
	if location == "" {
		location = DemoLocation
	}
	base := s.baseURL(r) + "/subscriptions/" + sub + "/providers/Microsoft.Network/locations/" + location
	q := "?api-version=" + url.QueryEscape(r.URL.Query().Get("api-version"))
	return base + "/operations/" + id + q, base + "/operationResults/" + id + q
}

func (s *Server) servePoll(w http.ResponseWriter, r *http.Request, rt route) {
	s.mu.Lock()
	op := s.ops[strings.ToLower(rt.opID)]
	if op == nil {
		s.mu.Unlock()
		writeError(w, &armError{Status: 404, Code: "NotFound", Message: "Operation " + rt.opID + " not found."})
		return
	}
	inProgress := op.remaining > 0
	if inProgress {
		op.remaining--
	}
	inProgress = inProgress || time.Now().Before(op.doneAt)
	fault := op.fault
	retry, wholeSeconds := s.opts.PollRetryAfter, false
	if s.azure != nil {
		retry, wholeSeconds = s.azure.cfg.PollRetryAfter, true
	}
	s.mu.Unlock()
	if inProgress {
		switch {
		case wholeSeconds:
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(retry.Seconds())))))
		case retry > 0:
			setRetryAfter(w.Header(), retry, true)
		}
		if rt.op == "operationresults" {
			w.Header().Set("Location", s.baseURL(r)+r.URL.RequestURI())
			w.WriteHeader(http.StatusAccepted)
			return
		}
		writeJSON(w, http.StatusOK, []byte(`{"status":"InProgress"}`))
		return
	}
	if fault != nil {
		if rt.op == "operationresults" {
			writeError(w, &armError{Status: http.StatusConflict, Code: fault.Code, Message: fault.Message})
			return
		}
		b, _ := json.Marshal(map[string]any{"status": "Failed", "error": map[string]string{"code": fault.Code, "message": fault.Message}})
		writeJSON(w, http.StatusOK, b)
		return
	}
	if rt.op == "operationresults" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	writeJSON(w, http.StatusOK, []byte(`{"status":"Succeeded"}`))
}

// setRetryAfter sets Retry-After in whole seconds (rounded up) and, when the
// delay is not whole seconds or always is set, Retry-After-Ms, which azcore
// reads first.
func setRetryAfter(h http.Header, d time.Duration, always bool) {
	h.Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
	if always || d%time.Second != 0 {
		h.Set("Retry-After-Ms", strconv.FormatInt(max(d.Milliseconds(), 1), 10))
	}
}

func writeFault(w http.ResponseWriter, f *Fault) {
	if f.RetryAfter > 0 {
		setRetryAfter(w.Header(), f.RetryAfter, false)
	}
	status := f.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	writeError(w, &armError{Status: status, Code: f.Code, Message: f.Message})
}

func writeError(w http.ResponseWriter, e *armError) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": e.Code, "message": e.Message, "details": []any{}}})
	writeJSON(w, e.Status, b)
}

func writeJSON(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
