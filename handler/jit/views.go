package jit

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// VM states. Configured, NotConfigured and Unsupported are Defender's
// portal tabs; the others say why a VM in a policy is not (yet) locked.
// Configured means, as last seen in ARM, that every NSG guarding the VM
// denies each of its policy ports to each of its addresses with this
// deployment's rules.
const (
	VMConfigured      = "Configured"
	VMNotConfigured   = "NotConfigured"
	VMUnsupported     = "Unsupported"
	VMLockdownPending = "LockdownPending" // the deny rules are being written
	VMLockdownFailed  = "LockdownFailed"  // writing them failed; Reason says why
	VMDenyRuleMissing = "DenyRuleMissing" // seen missing or changed in ARM; a repair is due
	VMReleasing       = "Releasing"       // its policy is being deleted
)

// Policy provisioning states, as Defender's JIT policies name them.
const (
	PolicySucceeded = "Succeeded"
	PolicyUpdating  = "Updating"
	PolicyFailed    = "Failed"
)

// VMLockdown is a policy VM's lockdown as last seen in ARM.
type VMLockdown struct {
	State    string
	Reason   string   // in words, when State is not VMConfigured
	Warnings []string // foreign rules that let its ports in ahead of the deny rules
}

// PolicyStatus is a policy's lockdown progress, as last seen in ARM.
type PolicyStatus struct {
	// ProvisioningState is PolicyDeleting, PolicyFailed (a VM failed),
	// PolicyUpdating (a VM pending or being repaired) or PolicySucceeded.
	ProvisioningState string
	VMs               []VMLockdown // in the policy's VM order
}

// lockdownOfVM judges one VM of pol from the NSGs' states.
func lockdownOfVM(pol Policy, vm VMPolicy, states map[string]NSGState) VMLockdown {
	if pol.State == PolicyDeleting {
		return VMLockdown{State: VMReleasing, Reason: "policy " + pol.Name + " is being deleted; its deny rules are being removed"}
	}
	out := VMLockdown{State: VMConfigured}
	worse := func(state, reason string) {
		rank := map[string]int{VMConfigured: 0, VMLockdownPending: 1, VMDenyRuleMissing: 2, VMLockdownFailed: 3}
		if rank[state] > rank[out.State] {
			out.State, out.Reason = state, reason
		}
	}
	for _, n := range vm.NSGs {
		st, ok := states[strings.ToLower(n.ID)]
		name := ResourceName(n.ID)
		gap, locked := firstGap(vm, st.Deny)
		switch {
		case ok && !st.SeenAt.IsZero() && locked && len(vm.PrivateIPs) > 0:
			out.Warnings = append(out.Warnings, bypasses(vm, st)...)
		case ok && st.SeenAt.Before(pol.UpdatedAt) && st.Failing() && !st.ErrorAt.Before(pol.UpdatedAt):
			worse(VMLockdownFailed, fmt.Sprintf("lockdown failed in NSG %s: %s", name, st.Error))
		case !ok || st.SeenAt.Before(pol.UpdatedAt):
			worse(VMLockdownPending, fmt.Sprintf("lockdown pending in NSG %s", name))
		case st.Missing:
			worse(VMDenyRuleMissing, fmt.Sprintf("NSG %s, which guarded the VM when the policy was written, no longer exists: the VM's network changed and its policy must follow (resource events and the sweeper re-read it)", name))
		case st.Failing():
			worse(VMLockdownFailed, fmt.Sprintf("deny rule missing in NSG %s (%s is open), and repairing it failed: %s", name, gap, st.Error))
		default:
			worse(VMDenyRuleMissing, fmt.Sprintf("deny rule missing in NSG %s (%s is open); repair pending", name, gap))
		}
	}
	if out.State == VMConfigured && len(out.Warnings) > 0 {
		out.Reason = out.Warnings[0]
	}
	return out
}

// statusOf judges pol from the NSGs' states.
func statusOf(pol Policy, states map[string]NSGState) PolicyStatus {
	st := PolicyStatus{ProvisioningState: PolicySucceeded, VMs: make([]VMLockdown, len(pol.VMs))}
	for i, vm := range pol.VMs {
		st.VMs[i] = lockdownOfVM(pol, vm, states)
		switch st.VMs[i].State {
		case VMLockdownFailed:
			st.ProvisioningState = PolicyFailed
		case VMLockdownPending, VMDenyRuleMissing:
			if st.ProvisioningState != PolicyFailed {
				st.ProvisioningState = PolicyUpdating
			}
		}
	}
	if pol.State == PolicyDeleting {
		st.ProvisioningState = PolicyDeleting
	}
	return st
}

// PolicyStatuses judges the policies' lockdown from the NSGs' states, one
// status per policy in order, with one read of the states.
func (s *API) PolicyStatuses(ctx context.Context, pols []Policy) ([]PolicyStatus, error) {
	states, err := s.nsgStates(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]PolicyStatus, len(pols))
	for i, p := range pols {
		out[i] = statusOf(p, states)
	}
	return out, nil
}

// nsgStates reads the NSGs' states by lower-case id.
func (s *API) nsgStates(ctx context.Context) (map[string]NSGState, error) {
	list, err := s.store.ListNSGStates(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading what was last seen of the NSGs: %w", err)
	}
	states := make(map[string]NSGState, len(list))
	for _, st := range list {
		states[strings.ToLower(st.ID)] = st
	}
	return states, nil
}

// VMStatus is a VM as people see it: whether JIT protects it and how it has
// been used lately.
type VMStatus struct {
	VMInfo
	State             string
	Reason            string
	Policy            string
	Ports             []PortRule
	RequestsLast7Days int       // requests that first opened some rule of the VM in the last 7 days (to the hour)
	LastAccess        time.Time // when the newest request to open one first did
	LastUser          string    // whom it opened for
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
func (s *API) GetRequest(ctx context.Context, p Principal, id string) (Request, error) {
	if p.ID == "" {
		return Request{}, Errorf(EUNAUTHORIZED, "sign in to read requests")
	}
	r, err := s.getRequest(ctx, id)
	if err != nil {
		return Request{}, err
	}
	if !p.Has(RoleReader) && !p.Has(RoleApprover) && !(p.Has(RoleRequester) && (samePrincipal(r.Requestor, p.ID) || samePrincipal(r.SubmittedBy, p.ID))) {
		return Request{}, Errorf(ENOTFOUND, "request %q does not exist", id)
	}
	return r, nil
}

// ListRequests returns requests matching f, newest first. Requesters see
// their own only: those for them, and those they submitted for someone else
// (as GetRequest lets them read).
func (s *API) ListRequests(ctx context.Context, p Principal, f RequestFilter) ([]Request, error) {
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
func (s *API) ScanAudit(ctx context.Context, p Principal, f AuditFilter, fn func(AuditEvent) error) error {
	if err := requireRole(p, RoleReader, "reading the audit trail"); err != nil {
		return err
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		return Errorf(EINVALID, "from must be before to")
	}
	return s.store.ScanAudit(ctx, f, fn)
}

// ListVMs returns every VM in scope with its JIT state and recent use.
func (s *API) ListVMs(ctx context.Context, p Principal) ([]VMStatus, error) {
	vms, _, err := s.ListVMsPage(ctx, p, VMPage{})
	return vms, err
}

// VMPage selects a page of the VMs in scope, in the order of their
// lower-case ids.
type VMPage struct {
	After string // the lower-case id of the last VM of the page before; "" for the first page
	Limit int    // at most this many; 0 = all
}

// ListVMsPage returns a page of the VMs in scope with their JIT state and
// recent use, and whether more follow. Only the page's VMs are judged.
func (s *API) ListVMsPage(ctx context.Context, p Principal, pg VMPage) ([]VMStatus, bool, error) {
	if err := requireAnyRole(p, "listing VMs", anyRole...); err != nil {
		return nil, false, err
	}
	all, err := s.inventory(ctx)
	if err != nil {
		return nil, false, Wrap(EUNAVAILABLE, err, "listing VMs from Azure failed; try again")
	}
	vms, more := vmPage(all, pg)
	out, err := s.vmStatuses(ctx, vms)
	return out, more, err
}

// vmPage picks pg's VMs out of the inventory, which is sorted by
// lower-case id.
func vmPage(inv []VMInfo, pg VMPage) ([]VMInfo, bool) {
	start := 0
	if pg.After != "" {
		start, _ = slices.BinarySearchFunc(inv, pg.After, func(v VMInfo, after string) int {
			if strings.ToLower(v.ID) <= after {
				return -1
			}
			return 1
		})
	}
	inv = inv[start:]
	if pg.Limit > 0 && len(inv) > pg.Limit {
		return inv[:pg.Limit], true
	}
	return inv, false
}

// vmStatuses judges the VMs and tells their recent use.
func (s *API) vmStatuses(ctx context.Context, vms []VMInfo) ([]VMStatus, error) {
	pols, err := s.store.ListPolicies(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing policies: %w", err)
	}
	states, err := s.nsgStates(ctx)
	if err != nil {
		return nil, err
	}
	now := s.now()
	// Recent use is read by key, one small record per VM; open ports come
	// from the live requests only, which the limits keep few (a person has
	// at most Limits.MaxOpenRequests). Nothing here reads past requests.
	ids := make([]string, len(vms))
	for i, vm := range vms {
		ids[i] = vm.ID
	}
	uses, err := s.store.VMUses(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("reading the VMs' recent use: %w", err)
	}
	live, err := s.store.ListRequests(ctx, RequestFilter{Statuses: []string{RequestActive}})
	if err != nil {
		return nil, fmt.Errorf("listing live requests: %w", err)
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
				ld := lockdownOfVM(pol, *vp, states)
				st.State, st.Reason, st.Policy, st.Ports, st.Warnings = ld.State, ld.Reason, pol.Name, vp.Ports, ld.Warnings
				switch {
				case vm.Unsupported != "":
					// The inventory, newer than the policy, says no NSG
					// guards it any more: nothing JIT writes protects it.
					st.State, st.Reason = VMUnsupported, "in policy "+pol.Name+", but "+vm.Unsupported
				case st.State == VMConfigured && !sameTopology(*vp, vm):
					st.State, st.Reason = VMLockdownPending, "its network changed since policy "+pol.Name+" was written (its addresses or NSGs); the lockdown follows"
				}
			}
		}
		// Only a grant that opened reached the VM (recordUse): a pending,
		// denied, expired or failed request is no access and its requestor
		// no user of it.
		if u, ok := uses[strings.ToLower(vm.ID)]; ok {
			st.RequestsLast7Days = u.OpenedSince(now.Add(-UseWindow))
			st.LastAccess, st.LastUser = u.LastAccess, u.LastUser
		}
		out[i] = st
		byVM[strings.ToLower(vm.ID)] = &out[i]
	}
	for _, r := range live {
		counted := map[string]bool{}
		for _, g := range r.Grants {
			key := strings.ToLower(g.VM)
			st := byVM[key]
			if st == nil {
				continue
			}
			// A live request is counted here when its use is not yet
			// (recordUse follows the grant's record), so that a VM shown
			// open is never shown unused.
			if at, ok := openedAt(g, r); ok && !counted[key] && !slices.Contains(uses[key].Recent, r.ID) {
				counted[key] = true
				st.RequestsLast7Days++
				if at.After(st.LastAccess) {
					st.LastAccess, st.LastUser = at, cmp.Or(r.RequestorName, r.Requestor)
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
func (s *Core) inventory(ctx context.Context) ([]VMInfo, error) {
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
	vms = sortedByID(vms)
	s.invMu.Lock()
	s.inv, s.invAt = vms, s.now()
	s.invMu.Unlock()
	return vms, nil
}

// RefreshInventory reads the VM inventory from Azure now, so GET /vms is
// served from memory: at start-up and by every sweep.
func (s *Core) RefreshInventory(ctx context.Context) error {
	_, err := s.readInventory(ctx)
	return err
}

// readInventory lists every VM in scope and keeps the list for GET /vms.
func (s *Core) readInventory(ctx context.Context) ([]VMInfo, error) {
	vms, err := s.net.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	vms = sortedByID(vms)
	s.invMu.Lock()
	s.inv, s.invAt = vms, s.now()
	s.invMu.Unlock()
	return vms, nil
}

// sortedByID sorts the inventory by lower-case id, the order GET /vms
// pages in.
func sortedByID(vms []VMInfo) []VMInfo {
	vms = slices.Clone(vms)
	slices.SortStableFunc(vms, func(a, b VMInfo) int { return strings.Compare(strings.ToLower(a.ID), strings.ToLower(b.ID)) })
	return vms
}

// forgetInventory makes the next GET /vms read Azure again.
func (s *Core) forgetInventory() {
	s.invMu.Lock()
	s.invAt = time.Time{}
	s.invMu.Unlock()
}

// openedAt reports whether the grant's rule was ever open in some NSG and
// when it first was. A rule recorded open without a time (written before
// OpenedAt was kept) counts from the request's start.
func openedAt(g Grant, r Request) (time.Time, bool) {
	var at time.Time
	opened := false
	for _, n := range g.NSGs {
		switch {
		case !n.OpenedAt.IsZero():
			if !opened || n.OpenedAt.Before(at) {
				at = n.OpenedAt
			}
			opened = true
		case n.State == RuleOpen && !opened:
			at, opened = r.StartTime, true
		}
	}
	return at, opened
}

func anyOpen(g Grant) bool {
	for _, n := range g.NSGs {
		if n.State == RuleOpen {
			return true
		}
	}
	return false
}
