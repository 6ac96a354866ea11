package jit

import "context"

// The API's revocations: a requestor or an admin ends live grants early;
// the reconciler revokes the grants of deleted VMs the same way.

// Revoke ends a request's live grants now. The requestor may revoke their
// own request; JIT.Admin any.
func (s *API) Revoke(ctx context.Context, p Principal, id string) (Request, error) {
	if err := requireRole(p, RoleRequester, "revoking access"); err != nil {
		return Request{}, err
	}
	return s.revoke(ctx, p, id, "", ReasonUserRequested)
}

// revoke ends the live grants of request id (only those of vm when vm is
// not empty), queues their closes and cancels their scheduled closes.
func (s *API) revoke(ctx context.Context, p Principal, id, vm, reason string) (Request, error) {
	r, err := s.getRequest(ctx, id)
	if err != nil {
		return Request{}, err
	}
	if !samePrincipal(r.Requestor, p.ID) && !p.Has(RoleAdmin) {
		return Request{}, Errorf(EFORBIDDEN, "only the requestor or a JIT.Admin may revoke request %s", id)
	}
	now := s.now()
	var ops []Operation
	var revoked []Grant
	updated, err := s.mutateAudited(ctx, id, auditedBy(func(r *Request) error {
		ops, revoked = nil, nil
		if r.Status == RequestPending {
			// Nothing opened yet: withdrawing it needs no ARM call.
			endPending(r, GrantRevoked, reason, now)
			r.Status = RequestClosed
			revoked = r.Grants
			return nil
		}
		if r.Status != RequestActive {
			return Errorf(ECONFLICT, "request %s has no open access left to revoke (status %s)", id, r.Status)
		}
		for i := range r.Grants {
			g := &r.Grants[i]
			if g.Ended(now) || vm != "" && !SameID(g.VM, vm) {
				continue
			}
			g.Status, g.StatusReason = GrantRevoked, reason
			revoked = append(revoked, *g)
			for _, n := range g.NSGs {
				if n.State == RuleClosed {
					continue
				}
				ops = append(ops, Operation{ID: OperationID(OpClose, r.ID, i, n.ID, now), Kind: OpClose, RequestID: r.ID, Grant: i, NSG: n.ID})
			}
		}
		if len(ops) == 0 {
			return Errorf(ECONFLICT, "request %s has no open access left to revoke", id)
		}
		return nil
	}, func(r *Request) []AuditEvent {
		events := make([]AuditEvent, len(revoked))
		for k, g := range revoked {
			events[k] = AuditEvent{Action: AuditRevoke, Actor: p.ID, Policy: r.Policy, Request: id, VM: g.VM,
				Protocol: g.Protocol, Ports: g.Ports, Sources: g.Sources, Result: ResultSuccess, Detail: reason}
		}
		return withNotice(events, s.notice(EventRevoked, *r, p.ID, reason))
	}))
	if err != nil {
		return Request{}, err
	}
	if len(ops) == 0 {
		return updated, nil
	}
	// The closes scheduled at the grants' ends stay: they find the rules
	// closed and do nothing.
	if err := s.queue.Enqueue(ctx, ops); err != nil {
		// The grants are marked revoked: the sweeper removes the rules.
		s.auditFailure(ctx, p, AuditRevoke, r.Policy, id, vm, "", err)
		return updated, nil
	}
	s.cfg.Log.Info().Str("request", id).Str("actor", p.ID).Str("reason", reason).Msg("revoked")
	return updated, nil
}
