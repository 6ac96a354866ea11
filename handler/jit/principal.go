package jit

import (
	"slices"
	"strings"
)

// App roles. JIT.Admin may do everything the others may.
const (
	RoleAdmin     = "JIT.Admin"
	RoleApprover  = "JIT.Approver"
	RoleRequester = "JIT.Requester"
	RoleReader    = "JIT.Reader"
)

// Principal is the caller of a use case.
type Principal struct {
	ID      string   // stable id (object id of a user or app)
	Name    string   // display name or UPN, for people
	Roles   []string // app roles
	Groups  []string // group ids from the token's groups claim
	Address string   // the caller's IP address, for "My IP"
}

// Has reports whether p holds role, or JIT.Admin.
func (p Principal) Has(role string) bool {
	return slices.Contains(p.Roles, RoleAdmin) || slices.Contains(p.Roles, role)
}

// CanonicalObjectID returns id in the form sign-in gives a principal's
// object id: a GUID written 8-4-4-4-12, lower case. ok is false for
// anything else (a UPN or mail address, a GUID in braces), which sign-in
// never gives and which therefore names nobody who signs in.
func CanonicalObjectID(id string) (canonical string, ok bool) {
	if len(id) != 36 {
		return "", false
	}
	for i, c := range id {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return "", false
			}
		}
	}
	return strings.ToLower(id), true
}

// samePrincipal reports whether two principal ids name the same principal.
// Object ids are compared in canonical form, whatever case they came in.
func samePrincipal(a, b string) bool {
	if ca, ok := CanonicalObjectID(a); ok {
		a = ca
	}
	if cb, ok := CanonicalObjectID(b); ok {
		b = cb
	}
	return a == b
}

// System is the principal of the service's own actions (expiry, sweeps).
var System = Principal{ID: "jitaccess", Name: "jitaccess", Roles: []string{RoleAdmin}}

// anyRole holds every role that may look at policies and VMs.
var anyRole = []string{RoleReader, RoleRequester, RoleApprover}

// requireAnyRole refuses callers that hold none of roles (JIT.Admin holds all).
func requireAnyRole(p Principal, doing string, roles ...string) error {
	if p.ID == "" {
		return Errorf(EUNAUTHORIZED, "sign in to %s", doing)
	}
	for _, r := range roles {
		if p.Has(r) {
			return nil
		}
	}
	return Errorf(EFORBIDDEN, "%s needs one of the roles %s", doing, strings.Join(roles, ", "))
}

func requireRole(p Principal, role, doing string) error {
	if p.ID == "" {
		return Errorf(EUNAUTHORIZED, "sign in to %s", doing)
	}
	if !p.Has(role) {
		return Errorf(EFORBIDDEN, "%s needs the %s role", doing, role)
	}
	return nil
}
