package jit

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// VM states, as Defender's portal tabs name them.
const (
	VMConfigured    = "Configured"
	VMNotConfigured = "NotConfigured"
	VMUnsupported   = "Unsupported"
)

// VMStatus is a VM as people see it: whether JIT protects it and how it has
// been used lately.
type VMStatus struct {
	VMInfo
	State             string
	Reason            string
	Policy            string
	Ports             []PortRule
	RequestsLast7Days int
	LastAccess        time.Time
	LastUser          string
	OpenPorts         []OpenPort
	Warnings          []string
}

// OpenPort is a port that a live grant holds open.
type OpenPort struct {
	Number   int
	Protocol string
	Sources  []string
	End      time.Time
	Request  string
}

// GetRequest returns one request. Requesters see their own; readers see all.
func (s *Service) GetRequest(ctx context.Context, p Principal, id string) (Request, error) {
	if p.ID == "" {
		return Request{}, Errorf(EUNAUTHORIZED, "sign in to read requests")
	}
	r, err := s.getRequest(ctx, id)
	if err != nil {
		return Request{}, err
	}
	if !p.Has(RoleReader) && !p.Has(RoleApprover) && !(p.Has(RoleRequester) && (r.Requestor == p.ID || r.SubmittedBy == p.ID)) {
		return Request{}, Errorf(ENOTFOUND, "request %q does not exist", id)
	}
	return r, nil
}

// ListRequests returns requests matching f, newest first. Requesters see
// their own only: those for them, and those they submitted for someone else
// (as GetRequest lets them read).
func (s *Service) ListRequests(ctx context.Context, p Principal, f RequestFilter) ([]Request, error) {
	if p.ID == "" {
		return nil, Errorf(EUNAUTHORIZED, "sign in to list requests")
	}
	if !p.Has(RoleReader) && !p.Has(RoleApprover) {
		if !p.Has(RoleRequester) {
			return nil, Errorf(EFORBIDDEN, "listing requests needs one of the roles %s, %s, %s", RoleReader, RoleRequester, RoleApprover)
		}
		f.Party = p.ID
	}
	return s.store.ListRequests(ctx, f)
}

// ScanAudit calls fn for each audit event matching f, newest first.
func (s *Service) ScanAudit(ctx context.Context, p Principal, f AuditFilter, fn func(AuditEvent) error) error {
	if err := requireRole(p, RoleReader, "reading the audit trail"); err != nil {
		return err
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		return Errorf(EINVALID, "from must be before to")
	}
	return s.store.ScanAudit(ctx, f, fn)
}

// ListVMs returns every VM in scope with its JIT state and recent use.
func (s *Service) ListVMs(ctx context.Context, p Principal) ([]VMStatus, error) {
	if err := requireAnyRole(p, "listing VMs", anyRole...); err != nil {
		return nil, err
	}
	vms, err := s.inventory(ctx)
	if err != nil {
		return nil, Wrap(EUNAVAILABLE, err, "listing VMs from Azure failed; try again")
	}
	pols, err := s.store.ListPolicies(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing policies: %w", err)
	}
	now := s.now()
	reqs, err := s.store.ListRequests(ctx, RequestFilter{Since: now.Add(-7 * 24 * time.Hour)})
	if err != nil {
		return nil, fmt.Errorf("listing requests: %w", err)
	}
	byVM := map[string]*VMStatus{}
	out := make([]VMStatus, len(vms))
	for i, vm := range vms {
		st := VMStatus{VMInfo: vm, State: VMNotConfigured, Reason: "no JIT policy names this VM"}
		if vm.Unsupported != "" {
			st.State, st.Reason = VMUnsupported, vm.Unsupported
		}
		for _, pol := range pols {
			if vp, ok := pol.VM(vm.ID); ok {
				st.State, st.Reason, st.Policy, st.Ports = VMConfigured, "", pol.Name, vp.Ports
			}
		}
		out[i] = st
		byVM[strings.ToLower(vm.ID)] = &out[i]
	}
	for _, r := range reqs { // newest first
		counted := map[string]bool{}
		for _, g := range r.Grants {
			st := byVM[strings.ToLower(g.VM)]
			if st == nil {
				continue
			}
			if !counted[strings.ToLower(g.VM)] {
				counted[strings.ToLower(g.VM)] = true
				st.RequestsLast7Days++
				if r.StartTime.After(st.LastAccess) {
					st.LastAccess, st.LastUser = r.StartTime, r.RequestorName
					if st.LastUser == "" {
						st.LastUser = r.Requestor
					}
				}
			}
			if !g.Ended(now) && anyOpen(g) {
				for _, n := range g.Ports {
					st.OpenPorts = append(st.OpenPorts, OpenPort{Number: n, Protocol: g.Protocol, Sources: g.Sources, End: g.End, Request: r.ID})
				}
			}
		}
	}
	for i := range out {
		slices.SortFunc(out[i].OpenPorts, func(a, b OpenPort) int { return a.Number - b.Number })
	}
	return out, nil
}

// inventory is every VM in scope, read from Azure at most once per
// InventoryTTL (list calls per page, never per VM).
func (s *Service) inventory(ctx context.Context) ([]VMInfo, error) {
	s.invMu.Lock()
	if !s.invAt.IsZero() && s.now().Sub(s.invAt) < s.cfg.InventoryTTL {
		vms := s.inv
		s.invMu.Unlock()
		return vms, nil
	}
	s.invMu.Unlock()
	vms, err := s.net.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	s.invMu.Lock()
	s.inv, s.invAt = vms, s.now()
	s.invMu.Unlock()
	return vms, nil
}

// RefreshInventory reads the VM inventory from Azure now, so GET /vms is
// served from memory: at start-up and by every sweep.
func (s *Service) RefreshInventory(ctx context.Context) error {
	_, err := s.readInventory(ctx)
	return err
}

// readInventory lists every VM in scope and keeps the list for GET /vms.
func (s *Service) readInventory(ctx context.Context) ([]VMInfo, error) {
	vms, err := s.net.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	s.invMu.Lock()
	s.inv, s.invAt = vms, s.now()
	s.invMu.Unlock()
	return vms, nil
}

// forgetInventory makes the next GET /vms read Azure again.
func (s *Service) forgetInventory() {
	s.invMu.Lock()
	s.invAt = time.Time{}
	s.invMu.Unlock()
}

func anyOpen(g Grant) bool {
	for _, n := range g.NSGs {
		if n.State == RuleOpen {
			return true
		}
	}
	return false
}
