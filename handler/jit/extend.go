package jit

import (
	"context"
	"time"
)

// ExtendInput moves the end of a request's live grants: to End, or to
// Duration from now.
type ExtendInput struct {
	End      time.Time
	Duration time.Duration
}

// Extend moves the end time of a request's live grants, within each port's
// maximum counted from when the request was accepted (its start, or its last
// approval). The old scheduled closes are
// cancelled (and would be no-ops anyway) and new ones scheduled. The
// requestor or a JIT.Admin may extend.
//
// A request that needed approval may not end later than the end its
// approvers agreed to (Grant.ApprovedEnd): it may be shortened and moved
// back up to that end, but a longer extension is refused (forbidden) and
// needs a new request, which is approved again. An extension is not a new
// approval round, so nobody could otherwise see or refuse it.
func (s *API) Extend(ctx context.Context, p Principal, id string, in ExtendInput) (Request, error) {
	if err := requireRole(p, RoleRequester, "extending access"); err != nil {
		return Request{}, err
	}
	r, err := s.getRequest(ctx, id)
	if err != nil {
		return Request{}, err
	}
	if !samePrincipal(r.Requestor, p.ID) && !p.Has(RoleAdmin) {
		return Request{}, Errorf(EFORBIDDEN, "only the requestor or a JIT.Admin may extend request %s", id)
	}
	if r.Status != RequestActive {
		return Request{}, Errorf(ECONFLICT, "request %s is %s: only active access can be extended", id, r.Status)
	}
	now := s.now()
	end := in.End.UTC()
	switch {
	case !in.End.IsZero() && in.Duration != 0:
		return Request{}, Errorf(EINVALID, "give endTimeUtc or duration, not both")
	case in.Duration > 0:
		end = now.Add(in.Duration)
	case in.End.IsZero():
		return Request{}, Errorf(EINVALID, "endTimeUtc (or duration) is required")
	}
	if !end.After(now) {
		return Request{}, Errorf(EINVALID, "endTimeUtc %s is in the past", end.Format(time.RFC3339))
	}
	pol, err := s.getPolicy(ctx, r.Policy)
	if err != nil {
		return Request{}, err
	}
	var ops []Operation
	updated, err := s.mutateAudited(ctx, id, auditedBy(func(r *Request) error {
		ops = nil
		for i := range r.Grants {
			g := &r.Grants[i]
			if g.Ended(now) {
				continue
			}
			if r.Approval != nil {
				approved := g.ApprovedEnd
				if approved.IsZero() {
					approved = g.End // approved before the approved end was recorded
				}
				if end.After(approved.Add(endSlack)) {
					return Errorf(EFORBIDDEN, "request %s was approved until %s: a longer extension needs approval; ask for access again",
						r.ID, approved.Format(time.RFC3339))
				}
			}
			vm, ok := pol.VM(g.VM)
			if !ok {
				return Errorf(ECONFLICT, "VM %s is no longer in policy %s", g.VM, pol.Name)
			}
			for _, n := range g.Ports {
				rule, ok := vm.Port(n, g.Protocol)
				if !ok {
					return Errorf(ECONFLICT, "port %d of VM %s is no longer in policy %s", n, ResourceName(g.VM), pol.Name)
				}
				if from := r.AcceptedAt(); end.Sub(from) > rule.MaxDuration+endSlack {
					return Errorf(EINVALID, "the new end time is more than the maximum %s after the request was accepted (%s) for port %d",
						FormatDuration(rule.MaxDuration), from.Format(time.RFC3339), n)
				}
			}
			g.End = end
			for k := range g.NSGs {
				n := &g.NSGs[k]
				ops = append(ops, Operation{ID: OperationID(OpClose, r.ID, i, n.ID, end), Kind: OpClose, RequestID: r.ID, Grant: i, NSG: n.ID, Due: end})
			}
		}
		if len(ops) == 0 {
			return Errorf(ECONFLICT, "request %s has no open access left to extend", id)
		}
		return nil
	}, func(r *Request) []AuditEvent {
		return []AuditEvent{{Action: AuditExtend, Actor: p.ID, Policy: r.Policy, Request: id, Result: ResultSuccess,
			Detail: "until " + end.Format(time.RFC3339)}}
	}))
	if err != nil {
		return Request{}, err
	}
	// The closes scheduled before stay: they come before the new end and
	// are no-ops then.
	if err := s.queue.Enqueue(ctx, ops); err != nil {
		// The grants carry the new end; the sweeper closes them then.
		s.auditFailure(ctx, p, "extend", r.Policy, id, "", "", err)
		return Request{}, Wrap(EUNAVAILABLE, err, "the new end time was recorded but its close could not be scheduled; the sweeper will close it on time")
	}
	s.cfg.Log.Info().Str("request", id).Str("actor", p.ID).Time("end", end).Msg("extended")
	return updated, nil
}
