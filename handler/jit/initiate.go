package jit

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// InitiateInput is an access request as a caller sends it.
type InitiateInput struct {
	VMs           []InitiateVM
	Justification string
	// OnBehalfOf names the person a delegate (a bot with JIT.Delegate)
	// asks for, by object id (see CanonicalObjectID); empty when callers
	// ask for themselves.
	OnBehalfOf string
}

// InitiateVM asks for ports of one VM.
type InitiateVM struct {
	ID    string
	Ports []InitiatePort
}

// InitiatePort asks for one port until End, or for Duration from now.
// Sources empty means the caller's own address.
type InitiatePort struct {
	Number   int
	Protocol string // optional; the policy's protocol when empty
	End      time.Time
	Duration time.Duration
	Sources  []string
}

// MaxRequestVMs bounds the VMs of one request, in both modes: Table
// Storage changes a request and its index rows in one transaction of at
// most 100 operations (the record, and the old and new rows of the time
// index and of each VM).
const MaxRequestVMs = 48

// endSlack forgives a client's clock being a little behind ours when it
// computes an end time at the maximum.
const endSlack = 5 * time.Second

// Initiate checks an access request against the policy and the caller, stores
// it and queues its operations: open now, close at the end time. It makes no
// ARM call: the worker does that.
func (s *API) Initiate(ctx context.Context, p Principal, policyName string, in InitiateInput) (Request, error) {
	if err := requireRole(p, RoleRequester, "requesting access"); err != nil {
		return Request{}, err
	}
	if err := ValidatePolicyName(policyName); err != nil {
		return Request{}, err
	}
	pol, err := s.getPolicy(ctx, policyName)
	if err != nil {
		return Request{}, err
	}
	subject, err := s.requestSubject(p, pol, in)
	if err != nil {
		s.auditRefusal(ctx, p, pol.Name, in, err)
		return Request{}, err
	}
	release, err := s.checkOpenRequests(ctx, subject)
	if err != nil {
		return Request{}, err
	}
	defer release()
	now := s.now()
	req, err := s.buildRequest(subject, pol, in, now)
	if err != nil {
		s.auditRefusal(ctx, p, pol.Name, in, err)
		return Request{}, err
	}
	if !samePrincipal(subject.ID, p.ID) {
		req.SubmittedBy = p.ID
	}
	if a := approvalFor(pol, req); a != nil {
		a.PendingUntil = now.Add(s.cfg.PendingExpiry)
		req.Approval, req.Status = a, RequestPending
	}
	events := make([]AuditEvent, len(req.Grants))
	for i, g := range req.Grants {
		detail := "until " + g.End.Format(time.RFC3339)
		if req.SubmittedBy != "" {
			detail += "; on behalf of " + req.Requestor
		}
		if req.Status == RequestPending {
			detail += "; waiting for approval"
		}
		events[i] = AuditEvent{ID: "request-" + req.ID + "-" + itoa(i), Time: now, Action: AuditRequest, Actor: p.ID,
			Policy: pol.Name, Request: req.ID, VM: g.VM, Protocol: g.Protocol, Ports: g.Ports, Sources: g.Sources,
			Result: ResultSuccess, Detail: clip(detail+"; "+req.Justification, 500)}
	}
	if req.Status == RequestPending {
		withNotice(events, s.notice(EventPending, req, p.ID, req.Justification))
	}
	if req, err = s.recordRequest(ctx, req, events); err != nil {
		return Request{}, err
	}
	if req.Status == RequestPending {
		s.cfg.Log.Info().Str("request", req.ID).Str("policy", pol.Name).Str("requestor", req.Requestor).Msg("access requested; waiting for approval")
		return req, nil
	}
	req, err = s.queueGrants(ctx, req)
	if err != nil {
		return Request{}, err
	}
	s.cfg.Log.Info().Str("request", req.ID).Str("policy", pol.Name).Str("requestor", p.ID).Int("grants", len(req.Grants)).Msg("access requested")
	return req, nil
}

// requestSubject is whom the request is for: the caller, or the person a
// delegate names. It checks the policy's list of requesters.
func (s *API) requestSubject(p Principal, pol Policy, in InitiateInput) (Principal, error) {
	subject := p
	if in.OnBehalfOf != "" {
		if !p.Has(RoleDelegate) {
			return Principal{}, Errorf(EFORBIDDEN, "onBehalfOf needs the %s role", RoleDelegate)
		}
		// The person's object id, as their own sign-in gives it: any other
		// name (a UPN, a mail address) would not match their id when they
		// approve, and so would let them approve their own request.
		oid, ok := CanonicalObjectID(in.OnBehalfOf)
		if !ok {
			return Principal{}, Errorf(EINVALID, "onBehalfOf %q must be the person's object id as sign-in gives it (a GUID such as 0f8fad5b-d9cb-469f-a165-70867728950e), not a name or mail address", shorten(in.OnBehalfOf))
		}
		subject = Principal{ID: oid, Name: oid, Address: p.Address}
	}
	if len(pol.Requesters) > 0 && !p.Has(RoleAdmin) && !matchesAny(subject, pol.Requesters) {
		return Principal{}, Errorf(EFORBIDDEN, "policy %s allows requests only from its listed requesters", pol.Name)
	}
	return subject, nil
}

// buildRequest validates in against the policy and turns it into a request
// with one grant per VM, protocol, source set and end time.
func (s *API) buildRequest(p Principal, pol Policy, in InitiateInput, now time.Time) (Request, error) {
	if len(in.VMs) == 0 {
		return Request{}, Errorf(EINVALID, "virtualMachines must name at least one VM")
	}
	if len(in.VMs) > MaxRequestVMs {
		return Request{}, Errorf(EINVALID, "virtualMachines names %d VMs: one request may name at most %d; split it", len(in.VMs), MaxRequestVMs)
	}
	if len(in.Justification) > 1000 {
		return Request{}, Errorf(EINVALID, "justification is longer than 1000 characters")
	}
	req := Request{ID: NewRequestID(), Policy: pol.Name, Requestor: p.ID, RequestorName: p.Name,
		Justification: in.Justification, StartTime: now, Status: RequestActive}
	seenVM := map[string]bool{}
	for i, ivm := range in.VMs {
		where := fmt.Sprintf("virtualMachines[%d]", i)
		id, err := ParseVMID(ivm.ID)
		if err != nil {
			return Request{}, Errorf(EINVALID, "%s.id: %s", where, ErrorMessage(err))
		}
		if seenVM[id.Key()] {
			return Request{}, Errorf(EINVALID, "%s.id: VM %s is listed twice", where, id)
		}
		seenVM[id.Key()] = true
		if err := s.inScope(id.String()); err != nil {
			return Request{}, Errorf(EINVALID, "%s.id: %s", where, ErrorMessage(err))
		}
		vm, ok := pol.VM(id.String())
		if !ok {
			return Request{}, Errorf(EINVALID, "%s.id: VM %s is not in policy %s", where, id, pol.Name)
		}
		if len(ivm.Ports) == 0 {
			return Request{}, Errorf(EINVALID, "%s.ports must name at least one port", where)
		}
		seenPort := map[string]bool{}
		for j, ip := range ivm.Ports {
			pw := fmt.Sprintf("%s.ports[%d]", where, j)
			g, err := s.grantFor(p, pol.Name, vm, ip, now)
			if err != nil {
				return Request{}, Errorf(EINVALID, "%s: %s", pw, ErrorMessage(err))
			}
			key := fmt.Sprintf("%d/%s", ip.Number, g.Protocol)
			if seenPort[key] {
				return Request{}, Errorf(EINVALID, "%s: port %d is listed twice", pw, ip.Number)
			}
			seenPort[key] = true
			req.Grants = mergeGrant(req.Grants, g)
		}
	}
	return req, nil
}

// grantFor checks one requested port and returns the grant it asks for.
func (s *API) grantFor(p Principal, policy string, vm *VMPolicy, ip InitiatePort, now time.Time) (Grant, error) {
	if ip.Number < 1 || ip.Number > 65535 {
		return Grant{}, Errorf(EINVALID, "port number %d is out of range: it must be between 1 and 65535", ip.Number)
	}
	proto := ""
	if ip.Protocol != "" {
		var err error
		if proto, err = ParseProtocol(ip.Protocol); err != nil {
			return Grant{}, err
		}
	}
	rule, ok := vm.Port(ip.Number, proto)
	if !ok {
		return Grant{}, Errorf(EINVALID, "port %d is not in policy %s for VM %s (allowed: %s)", ip.Number, policy, vm.Name, joinInts(vm.PortNumbers()))
	}
	if proto == "" {
		proto = rule.Protocol
	}
	end := ip.End.UTC()
	switch {
	case !ip.End.IsZero() && ip.Duration != 0:
		return Grant{}, Errorf(EINVALID, "give endTimeUtc or duration, not both")
	case ip.Duration != 0:
		end = now.Add(ip.Duration)
	case ip.End.IsZero():
		return Grant{}, Errorf(EINVALID, "endTimeUtc (or duration) is required")
	}
	if !end.After(now) {
		return Grant{}, Errorf(EINVALID, "endTimeUtc %s is in the past", end.Format(time.RFC3339))
	}
	// An end time computed on the caller's clock gets some slack; a
	// duration is exact.
	slack := endSlack
	if ip.Duration != 0 {
		slack = 0
	}
	if d := end.Sub(now); d > rule.MaxDuration+slack {
		return Grant{}, Errorf(EINVALID, "requested time %s is longer than the maximum %s for port %d", FormatDuration(d.Round(time.Second)), FormatDuration(rule.MaxDuration), ip.Number)
	} else if d+min(slack, s.cfg.MinDuration/2) < s.cfg.MinDuration {
		return Grant{}, Errorf(EINVALID, "requested time %s is shorter than the minimum %s", FormatDuration(d.Round(time.Second)), FormatDuration(s.cfg.MinDuration))
	}
	srcs := ip.Sources
	if len(srcs) == 0 {
		if p.Address == "" {
			return Grant{}, Errorf(EINVALID, "no allowedSourceAddressPrefix was given and the caller's address is unknown")
		}
		srcs = []string{p.Address}
	}
	canon, err := CanonicalPrefixes(srcs)
	if err != nil {
		return Grant{}, err
	}
	for _, c := range canon {
		if !PrefixAllowed(c, rule.AllowedSources) {
			return Grant{}, Errorf(EINVALID, "source %s is not allowed for port %d (allowed: %s)", c, ip.Number, strings.Join(rule.AllowedSources, ", "))
		}
	}
	if !sharesFamily(canon, vm.PrivateIPs) {
		return Grant{}, Errorf(EINVALID, "source %s cannot reach VM %s: its addresses (%s) are of the other IP version",
			strings.Join(canon, ", "), vm.Name, strings.Join(vm.PrivateIPs, ", "))
	}
	return Grant{VM: vm.ID, Protocol: proto, Ports: []int{ip.Number}, Sources: canon, Duration: ip.Duration,
		Destinations: vm.PrivateIPs, End: end, Status: GrantInitiating, NSGs: pendingNSGs(vm.NSGs)}, nil
}

// sharesFamily reports whether some source can reach some address: both
// of one IP version, or a source of none ("*", a service tag).
func sharesFamily(sources, addrs []string) bool {
	for _, fam := range []string{familyV4, familyV6} {
		if len(byFamily(sources, fam)) > 0 && len(byFamily(addrs, fam)) > 0 {
			return true
		}
	}
	return false
}

func pendingNSGs(refs []NSGRef) []GrantNSG {
	out := make([]GrantNSG, len(refs))
	for i, r := range refs {
		out[i] = GrantNSG{ID: r.ID, State: RulePending}
	}
	return out
}

// mergeGrant adds g to gs, folding it into a grant with the same VM,
// protocol, sources and end time, so that one rule carries them.
func mergeGrant(gs []Grant, g Grant) []Grant {
	for i := range gs {
		h := &gs[i]
		if SameID(h.VM, g.VM) && h.Protocol == g.Protocol && h.End.Equal(g.End) && h.Duration == g.Duration && slices.Equal(h.Sources, g.Sources) {
			h.Ports = sortedCopy(append(h.Ports, g.Ports...))
			return gs
		}
	}
	return append(gs, g)
}

// recordRequest stores a new request and its audit events, together.
func (s *API) recordRequest(ctx context.Context, req Request, events []AuditEvent) (Request, error) {
	saved, err := s.store.CreateRequest(ctx, req, s.stamp(events)...)
	if err != nil {
		return Request{}, fmt.Errorf("storing request: %w", err)
	}
	if hasNotice(events) {
		s.kickNotices()
	}
	return saved, nil
}

// grantOps are the operations of req's grants: for each grant and NSG, an
// open now and a close at the grant's end.
func grantOps(req Request) []Operation {
	var ops []Operation
	for i, g := range req.Grants {
		for _, n := range g.NSGs {
			ops = append(ops,
				Operation{ID: OperationID(OpOpen, req.ID, i, n.ID, time.Time{}), Kind: OpOpen, RequestID: req.ID, Grant: i, NSG: n.ID},
				Operation{ID: OperationID(OpClose, req.ID, i, n.ID, g.End), Kind: OpClose, RequestID: req.ID, Grant: i, NSG: n.ID, Due: g.End})
		}
	}
	return ops
}

// queueGrants puts each grant's open (now) and close (at its end) on the
// queue for every NSG. If the queue fails, the grants are marked failed;
// the sweeper still removes anything that opened.
func (s *API) queueGrants(ctx context.Context, req Request) (Request, error) {
	ops := grantOps(req)
	qerr := s.queue.Enqueue(ctx, ops)
	if qerr == nil {
		return req, nil
	}
	if _, err := s.mutateRequest(ctx, req.ID, func(r *Request) error {
		for _, op := range ops {
			if n, ok := r.Grants[op.Grant].NSG(op.NSG); ok {
				r.Grants[op.Grant].Status = GrantFailed
				n.Error = "could not be queued"
			}
		}
		return nil
	}); err != nil {
		s.cfg.Log.Warn().Err(err).Str("request", req.ID).Msg("marking grants whose operations could not be queued failed; the sweeper gives them up")
	}
	s.auditFailure(ctx, System, AuditRequest, req.Policy, req.ID, "", "", qerr)
	return Request{}, Wrap(EUNAVAILABLE, qerr, "the request was recorded but its operations could not be queued; nothing was opened, try again")
}

// auditRefusal records a refused request for the auditor, without the
// caller's raw input.
func (s *API) auditRefusal(ctx context.Context, p Principal, policy string, in InitiateInput, cause error) {
	vm := ""
	if len(in.VMs) > 0 {
		if id, err := ParseVMID(in.VMs[0].ID); err == nil {
			vm = id.String()
		}
	}
	_ = s.audit(ctx, AuditEvent{Action: AuditRefused, Actor: p.ID, Policy: policy, VM: vm, Result: ResultFailure,
		Detail: clip(ErrorMessage(cause), 500)})
}

// mutateRequest applies fn to the stored request and writes it back,
// retrying when someone else wrote it in between.
func (s *Core) mutateRequest(ctx context.Context, id string, fn func(*Request) error) (Request, error) {
	return s.mutateAudited(ctx, id, func(r *Request) ([]AuditEvent, error) { return nil, fn(r) })
}

// auditedBy makes a mutateAudited function of fn, which changes the
// request, and events, which return the events that record the change
// once fn has made it.
func auditedBy(fn func(*Request) error, events func(*Request) []AuditEvent) func(*Request) ([]AuditEvent, error) {
	return func(r *Request) ([]AuditEvent, error) {
		if err := fn(r); err != nil {
			return nil, err
		}
		return events(r), nil
	}
}

// mutateAudited is mutateRequest for a change that is audited: fn also
// returns the events that record it, and the store keeps them with the
// change or not at all. fn may run more than once: only the events of the
// run whose change is stored are kept.
func (s *Core) mutateAudited(ctx context.Context, id string, fn func(*Request) ([]AuditEvent, error)) (Request, error) {
	for attempt := 0; ; attempt++ {
		r, err := s.store.GetRequest(ctx, id)
		if err != nil {
			return Request{}, err
		}
		events, err := fn(&r)
		if err != nil {
			return Request{}, err
		}
		r.updateStatus()
		saved, err := s.store.UpdateRequest(ctx, r, s.stamp(events)...)
		if err == nil {
			if hasNotice(events) {
				s.kickNotices()
			}
			return saved, nil
		}
		if ErrorCode(err) != ECONFLICT || attempt >= 20 {
			return Request{}, err
		}
		if err := ctx.Err(); err != nil {
			return Request{}, err
		}
	}
}

func joinInts(ns []int) string {
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = fmt.Sprint(n)
	}
	return strings.Join(parts, ", ")
}
