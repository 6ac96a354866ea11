package jit

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// RoleDelegate may request access on behalf of someone else (onBehalfOf):
// bots and portals that act for people.
const RoleDelegate = "JIT.Delegate"

// DefaultPendingExpiry is how long a request waits for approval.
const DefaultPendingExpiry = time.Hour

// Approval says who must approve requests before anything opens.
type Approval struct {
	Required     bool     `json:"Required"`
	Approvers    []string `json:"Approvers"`    // principal or group ids; empty: anyone with JIT.Approver
	MinApprovals int      `json:"MinApprovals"` // distinct approvers needed; 1 when zero
}

// normalise validates an approval rule in place.
func (a *Approval) normalise(where string) error {
	if a == nil || !a.Required {
		return nil
	}
	if a.MinApprovals == 0 {
		a.MinApprovals = 1
	}
	if a.MinApprovals < 1 || a.MinApprovals > 10 {
		return Errorf(EINVALID, "%s.approval.minApprovals must be between 1 and 10", where)
	}
	if len(a.Approvers) > 100 {
		return Errorf(EINVALID, "%s.approval.approvers may list at most 100 ids", where)
	}
	for _, id := range a.Approvers {
		if err := validPrincipalRef(id); err != nil {
			return Errorf(EINVALID, "%s.approval.approvers: %s", where, ErrorMessage(err))
		}
	}
	if len(a.Approvers) > 0 && len(a.Approvers) < a.MinApprovals {
		return Errorf(EINVALID, "%s.approval: minApprovals %d is more than the %d approvers listed", where, a.MinApprovals, len(a.Approvers))
	}
	return nil
}

// validPrincipalRef checks a principal or group id as policies name them.
func validPrincipalRef(id string) error {
	if id == "" || len(id) > 128 {
		return Errorf(EINVALID, "an id must be 1 to 128 characters long")
	}
	for _, c := range id {
		if c < 0x21 || c > 0x7e {
			return Errorf(EINVALID, "id %q may contain only printable ASCII without spaces", shorten(id))
		}
	}
	return nil
}

// RequestApproval is a pending request's approval state.
type RequestApproval struct {
	MinApprovals int      `json:"MinApprovals"` // the largest of the rules' minimums
	Approvers    []string `json:"Approvers"`    // every rule's approvers, for people to read
	// Rules are what must be satisfied, one per distinct approver list
	// among the request's ports (see approvalFor). Requests stored before
	// rules existed have none and are judged by MinApprovals and Approvers.
	Rules        []ApprovalRule `json:"Rules"`
	PendingUntil time.Time      `json:"PendingUntil"`
	Decisions    []Decision     `json:"Decisions"`
}

// ApprovalRule is one approver list a request must satisfy.
type ApprovalRule struct {
	Approvers    []string `json:"Approvers"` // principal or group ids; empty: anyone with JIT.Approver
	MinApprovals int      `json:"MinApprovals"`
	ApprovedBy   []string `json:"ApprovedBy"` // ids of those who approved as members of Approvers
}

// mayApprove reports whether p may approve the request under some rule.
func (a *RequestApproval) mayApprove(p Principal) bool {
	if len(a.Rules) == 0 {
		return mayApprove(p, a.Approvers)
	}
	return slices.ContainsFunc(a.Rules, func(r ApprovalRule) bool { return mayApprove(p, r.Approvers) })
}

// record counts p's approval towards every rule p is an approver of.
func (a *RequestApproval) record(p Principal) {
	for i := range a.Rules {
		if mayApprove(p, a.Rules[i].Approvers) {
			a.Rules[i].ApprovedBy = append(a.Rules[i].ApprovedBy, p.ID)
		}
	}
}

// satisfied reports whether the request has every approval it needs.
func (a *RequestApproval) satisfied() bool {
	for _, r := range a.Rules {
		if len(r.ApprovedBy) < r.MinApprovals {
			return false
		}
	}
	return a.Approvals() >= a.MinApprovals
}

// Decision is one approver's answer.
type Decision struct {
	By      string    `json:"By"`
	ByName  string    `json:"ByName"`
	At      time.Time `json:"At"`
	Approve bool      `json:"Approve"`
	Comment string    `json:"Comment"`
}

// Approvals counts the approving decisions.
func (a *RequestApproval) Approvals() int {
	n := 0
	for _, d := range a.Decisions {
		if d.Approve {
			n++
		}
	}
	return n
}

// AcceptedAt is when the request was accepted and its opens queued: its
// start, or the last approval for a request that needed approval.
func (r Request) AcceptedAt() time.Time {
	at := r.StartTime
	if r.Approval != nil {
		for _, d := range r.Approval.Decisions {
			if d.Approve && d.At.After(at) {
				at = d.At
			}
		}
	}
	return at
}

// approvalFor is the approval a request needs. Each requested port is
// governed by one rule: its own approval when that is required, else the
// policy's when that is required, else none. A port's own approval replaces
// the policy's rather than joining it, so a policy-level approver cannot
// open a port that names stricter approvers; and a port cannot waive the
// policy's approval by saying it needs none. A request over several ports
// needs every port's rule satisfied (MinApprovals approvals from each
// port's approvers; ports with the same approvers share one rule with the
// larger minimum) and, in all, the largest minimum of distinct approvers.
func approvalFor(pol Policy, req Request) *RequestApproval {
	var out *RequestApproval
	add := func(a *Approval) {
		if out == nil {
			out = &RequestApproval{}
		}
		need := max(a.MinApprovals, 1)
		out.MinApprovals = max(out.MinApprovals, need)
		for _, id := range a.Approvers {
			if !slices.ContainsFunc(out.Approvers, func(o string) bool { return strings.EqualFold(o, id) }) {
				out.Approvers = append(out.Approvers, id)
			}
		}
		for i := range out.Rules {
			if sameIDSet(out.Rules[i].Approvers, a.Approvers) {
				out.Rules[i].MinApprovals = max(out.Rules[i].MinApprovals, need)
				return
			}
		}
		out.Rules = append(out.Rules, ApprovalRule{Approvers: slices.Clone(a.Approvers), MinApprovals: need})
	}
	for _, g := range req.Grants {
		vm, ok := pol.VM(g.VM)
		if !ok {
			continue
		}
		for _, n := range g.Ports {
			r, ok := vm.Port(n, g.Protocol)
			switch {
			case ok && r.Approval != nil && r.Approval.Required:
				add(r.Approval)
			case pol.Approval != nil && pol.Approval.Required:
				add(pol.Approval)
			}
		}
	}
	return out
}

// sameIDSet reports whether a and b list the same ids, in any order and case.
func sameIDSet(a, b []string) bool {
	in := func(xs, ys []string) bool {
		for _, x := range xs {
			if !slices.ContainsFunc(ys, func(y string) bool { return strings.EqualFold(x, y) }) {
				return false
			}
		}
		return true
	}
	return in(a, b) && in(b, a)
}

// mayApprove reports whether p is one of the approvers (or any approver
// when the list is empty).
func mayApprove(p Principal, approvers []string) bool {
	if len(approvers) == 0 {
		return true
	}
	return matchesAny(p, approvers)
}

// matchesAny reports whether p's id or one of its groups is in ids.
func matchesAny(p Principal, ids []string) bool {
	for _, id := range ids {
		if strings.EqualFold(id, p.ID) || slices.ContainsFunc(p.Groups, func(g string) bool { return strings.EqualFold(g, id) }) {
			return true
		}
	}
	return false
}

// Approve records p's approval of a pending request. On the last approval
// needed, the request opens. Requestors may not approve their own requests.
//
// The policy may have changed while the request waited, so an approval
// first checks the request against the policy as it is now (see
// followApprovers makes the policy's current approvers decide a pending
// request whose policy changed its approvers since it was asked for (and
// gives requests stored before per-rule approvals their rules): the rules
// are worked out again from the policy, earlier approvals count towards a
// new rule only where the approver is named in it (a group membership at
// the time cannot be checked again); it reports whether they changed. A
// policy that no longer asks for approval keeps the request's own rules.
func followApprovers(pol Policy, r *Request) bool {
	cur := approvalFor(pol, *r)
	if cur == nil || sameRules(cur.Rules, r.Approval.Rules) {
		return false
	}
	for i := range cur.Rules {
		for _, d := range r.Approval.Decisions {
			if d.Approve && slices.ContainsFunc(cur.Rules[i].Approvers, func(a string) bool { return samePrincipal(a, d.By) }) {
				cur.Rules[i].ApprovedBy = append(cur.Rules[i].ApprovedBy, d.By)
			}
		}
	}
	r.Approval.Rules, r.Approval.MinApprovals, r.Approval.Approvers = cur.Rules, cur.MinApprovals, cur.Approvers
	return true
}

// sameRules reports whether two rule sets name the same approvers and
// minimums (what was approved aside).
func sameRules(a, b []ApprovalRule) bool {
	return slices.EqualFunc(a, b, func(x, y ApprovalRule) bool {
		return x.MinApprovals == y.MinApprovals && slices.Equal(x.Approvers, y.Approvers)
	})
}

// unfitReason). A request that no longer fits is not approved: it is
// closed as denied with reason PolicyChanged, audited as withdrawn, and the
// approver gets a conflict saying why.
func (s *API) Approve(ctx context.Context, p Principal, id, comment string) (Request, error) {
	return s.decide(ctx, p, id, comment, true)
}

// Deny refuses a pending request; nothing opens.
func (s *API) Deny(ctx context.Context, p Principal, id, comment string) (Request, error) {
	return s.decide(ctx, p, id, comment, false)
}

func (s *API) decide(ctx context.Context, p Principal, id, comment string, approve bool) (Request, error) {
	verb := map[bool]string{true: "approving", false: "denying"}[approve]
	if err := requireRole(p, RoleApprover, verb+" requests"); err != nil {
		return Request{}, err
	}
	if len(comment) > 1000 {
		return Request{}, Errorf(EINVALID, "comment is longer than 1000 characters")
	}
	now := s.now()
	opened, withdrawn := false, ""
	updated, err := s.mutateAudited(ctx, id, auditedBy(func(r *Request) error {
		opened, withdrawn = false, ""
		if r.Status != RequestPending || r.Approval == nil {
			return Errorf(ECONFLICT, "request %s is not waiting for approval (status %s)", r.ID, r.Status)
		}
		// Both the person the request is for and a delegate that submitted
		// it, compared as canonical ids.
		if samePrincipal(p.ID, r.Requestor) || r.SubmittedBy != "" && samePrincipal(p.ID, r.SubmittedBy) {
			return Errorf(EFORBIDDEN, "you cannot approve or deny your own request")
		}
		changed := false
		if approve {
			// Against the policy as it is now: what it still allows, and
			// who may approve now.
			pol, err := s.store.GetPolicy(ctx, r.Policy)
			if err != nil && ErrorCode(err) != ENOTFOUND {
				return fmt.Errorf("reading policy %s: %w", r.Policy, err)
			}
			found := err == nil
			if found {
				changed = followApprovers(pol, r)
			}
			if !r.Approval.mayApprove(p) {
				if changed {
					return Errorf(EFORBIDDEN, "the approvers of request %s changed with its policy, and you are not one of them now", r.ID)
				}
				return Errorf(EFORBIDDEN, "you are not one of the approvers of request %s", r.ID)
			}
			if withdrawn = unfitReason(pol, found, r); withdrawn != "" {
				r.Status = RequestDenied
				endPending(r, GrantRevoked, ReasonPolicyChanged, now)
				return nil
			}
		}
		if !r.Approval.mayApprove(p) {
			return Errorf(EFORBIDDEN, "you are not one of the approvers of request %s", r.ID)
		}
		for _, d := range r.Approval.Decisions {
			if strings.EqualFold(d.By, p.ID) {
				return Errorf(ECONFLICT, "you have already decided on request %s", r.ID)
			}
		}
		if !now.Before(r.Approval.PendingUntil) {
			return Errorf(ECONFLICT, "request %s waited too long for approval and has expired", r.ID)
		}
		r.Approval.Decisions = append(r.Approval.Decisions, Decision{By: p.ID, ByName: p.Name, At: now, Approve: approve, Comment: comment})
		if !approve {
			r.Status = RequestDenied
			endPending(r, GrantRevoked, ReasonDenied, now)
			return nil
		}
		r.Approval.record(p)
		if !r.Approval.satisfied() {
			return nil
		}
		// The last approval needed: the clock of each grant starts now.
		for i := range r.Grants {
			g := &r.Grants[i]
			if g.Duration > 0 {
				g.End = now.Add(g.Duration)
			}
			g.ApprovedEnd = g.End
			if !g.End.After(now) {
				g.Status, g.StatusReason = GrantClosed, ReasonExpired
				for k := range g.NSGs {
					g.NSGs[k].State = RuleClosed
				}
			}
		}
		r.Status = RequestActive
		opened = true
		return nil
	}, func(r *Request) []AuditEvent {
		if withdrawn != "" {
			return []AuditEvent{{Action: AuditWithdraw, Actor: p.ID, Policy: r.Policy, Request: id,
				Result: ResultSuccess, Detail: clip(withdrawn, 500), Notice: s.notice(EventDenied, *r, p.ID, withdrawn)}}
		}
		action := map[bool]string{true: AuditApprove, false: AuditDeny}[approve]
		events := make([]AuditEvent, len(r.Grants))
		for k, g := range r.Grants {
			events[k] = AuditEvent{Action: action, Actor: p.ID, Policy: r.Policy, Request: id, VM: g.VM,
				Protocol: g.Protocol, Ports: g.Ports, Sources: g.Sources, Result: ResultSuccess, Detail: clip(comment, 500)}
		}
		switch {
		case !approve:
			return withNotice(events, s.notice(EventDenied, *r, p.ID, comment))
		case opened:
			return withNotice(events, s.notice(EventApproved, *r, p.ID, comment))
		}
		return events
	}))
	if err != nil {
		return Request{}, err
	}
	if withdrawn != "" {
		s.cfg.Log.Info().Str("request", id).Str("approver", p.ID).Str("reason", withdrawn).Msg("withdrawn at approval")
		return Request{}, Errorf(ECONFLICT, "request %s was not approved and is now closed: %s", id, withdrawn)
	}
	s.cfg.Log.Info().Str("request", id).Str("approver", p.ID).Bool("approve", approve).Bool("opening", opened).Msg("decision")
	if !approve || !opened {
		return updated, nil
	}
	return s.queueGrants(ctx, updated)
}

// unfitReason says why a pending request no longer fits its policy as it
// is now (found false when the policy is gone), or "" when it still does:
// the policy exists and is not being deleted, and every grant's VM, ports,
// protocol, sources and time are still allowed.
func unfitReason(pol Policy, found bool, r *Request) string {
	if !found {
		return fmt.Sprintf("policy %s no longer exists", r.Policy)
	}
	if pol.State == PolicyDeleting {
		return fmt.Sprintf("policy %s is being deleted", pol.Name)
	}
	for _, g := range r.Grants {
		vm, ok := pol.VM(g.VM)
		if !ok {
			return fmt.Sprintf("VM %s is no longer in policy %s", ResourceName(g.VM), pol.Name)
		}
		for _, n := range g.Ports {
			rule, ok := vm.Port(n, g.Protocol)
			if !ok {
				return fmt.Sprintf("port %d (%s) of VM %s is no longer in policy %s", n, g.Protocol, vm.Name, pol.Name)
			}
			for _, c := range g.Sources {
				if !PrefixAllowed(c, rule.AllowedSources) {
					return fmt.Sprintf("source %s is no longer allowed for port %d of VM %s", c, n, vm.Name)
				}
			}
			// A duration starts at approval; an end time was checked
			// against the request's start.
			d, slack := g.Duration, time.Duration(0)
			if d == 0 {
				d, slack = g.End.Sub(r.StartTime), endSlack
			}
			if d > rule.MaxDuration+slack {
				return fmt.Sprintf("the requested time %s is longer than the maximum %s now set for port %d of VM %s",
					FormatDuration(d.Round(time.Second)), FormatDuration(rule.MaxDuration), n, vm.Name)
			}
		}
	}
	return ""
}

// endPending ends every grant of a request that never opened.
func endPending(r *Request, status, reason string, now time.Time) {
	for i := range r.Grants {
		g := &r.Grants[i]
		g.Status, g.StatusReason, g.ClosedAt = status, reason, now
		for k := range g.NSGs {
			g.NSGs[k].State = RuleClosed
		}
	}
}

// expirePending ends requests that waited for approval past their time.
func (s *Reconciler) expirePending(ctx context.Context) (int, error) {
	reqs, err := s.store.ListRequests(ctx, RequestFilter{Statuses: []string{RequestPending}})
	if err != nil {
		return 0, fmt.Errorf("listing pending requests: %w", err)
	}
	now := s.now()
	n := 0
	for _, r := range reqs {
		if r.Approval == nil || now.Before(r.Approval.PendingUntil) {
			continue
		}
		_, err := s.mutateAudited(ctx, r.ID, auditedBy(func(r *Request) error {
			if r.Status != RequestPending {
				return Errorf(ECONFLICT, "no longer pending")
			}
			r.Status = RequestExpired
			endPending(r, GrantClosed, ReasonApprovalExpired, now)
			return nil
		}, func(r *Request) []AuditEvent {
			return []AuditEvent{{ID: "expire-" + r.ID, Action: AuditExpire, Actor: System.ID, Policy: r.Policy,
				Request: r.ID, Result: ResultSuccess, Detail: "no decision in time",
				Notice: s.notice(EventDenied, *r, System.ID, "expired without enough approvals")}}
		}))
		if ErrorCode(err) == ECONFLICT {
			continue
		} else if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
