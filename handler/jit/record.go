package jit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// What the worker and the reconciler both record about a grant's rules:
// an open, a close, a failure. Each is idempotent: a repeated operation
// finds the outcome recorded and does nothing.

// ruleFailed records a failed open or close on the grant and in the audit
// trail, and returns the error to retry with.
func (s *Core) ruleFailed(ctx context.Context, req Request, i int, nsg string, act ruleAction, cause error) error {
	g := req.Grants[i]
	s.recordRuleError(ctx, req.ID, i, nsg, cause)
	if act == ruleOpen {
		s.auditFailure(ctx, System, AuditOpen, req.Policy, req.ID, g.VM, nsg, cause)
		return fmt.Errorf("opening grant %s-%d in %s: %w", req.ID, i, nsg, cause)
	}
	s.auditFailure(ctx, System, AuditClose, req.Policy, req.ID, g.VM, nsg, cause)
	return fmt.Errorf("closing grant %s-%d in %s: %w", req.ID, i, nsg, cause)
}

// errRecorded: the outcome to record is recorded already.
var errRecorded = errors.New("recorded already")

// recordOpen audits and records that grant i's rule is in nsg.
func (s *Core) recordOpen(ctx context.Context, req Request, i int, nsg string) error {
	g := req.Grants[i]
	now := s.now()
	ev := AuditEvent{ID: "open-" + req.ID + "-" + itoa(i) + "-" + ShortHash(nsg), Time: now, Action: AuditOpen,
		Actor: System.ID, Policy: req.Policy, Request: req.ID, VM: g.VM, NSG: nsg, Protocol: g.Protocol, Ports: g.Ports,
		Sources: g.Sources, Result: ResultSuccess, Detail: "until " + g.End.Format(time.RFC3339)}
	endedMeanwhile, nowOpen := false, false
	updated, err := s.mutateAudited(ctx, req.ID, func(r *Request) ([]AuditEvent, error) {
		endedMeanwhile, nowOpen = false, false
		g := &r.Grants[i]
		n, _ := g.NSG(nsg)
		if n.State == RuleClosed || g.Ended(now) {
			// The rule was written (and is audited as opened); it goes again
			// at once, but it was open, and the record says so.
			endedMeanwhile = true
			if n.OpenedAt.IsZero() {
				n.OpenedAt = now
			}
			return []AuditEvent{ev}, nil
		}
		if n.State == RuleOpen && !n.OpenedAt.IsZero() {
			return nil, errRecorded // a sweep found it in the NSG first
		}
		n.State, n.OpenedAt, n.Error = RuleOpen, now, ""
		e := ev
		if g.Status == GrantInitiating && allOpen(g) {
			g.Status, nowOpen = GrantInitiated, true
			e.Notice = s.notice(EventOpened, grantOnly(*r, i), System.ID, "")
		}
		return []AuditEvent{e}, nil
	})
	if errors.Is(err, errRecorded) {
		return nil
	}
	if err != nil {
		// The rule is in the NSG whatever the store says: the trail
		// records it even when the request cannot.
		_ = s.audit(ctx, ev)
		return fmt.Errorf("recording open of grant %s-%d: %w", req.ID, i, err)
	}
	s.recordUse(ctx, updated, i, now)
	if endedMeanwhile {
		// Revoked or expired while the rule was being written: take it away again.
		return s.removeRule(ctx, updated, i, nsg)
	}
	s.cfg.Log.Info().Str("request", req.ID).Int("grant", i).Str("vm", g.VM).Str("nsg", nsg).Bool("grantOpen", nowOpen).Msg("opened")
	return nil
}

func allOpen(g *Grant) bool {
	for _, n := range g.NSGs {
		if n.State != RuleOpen {
			return false
		}
	}
	return true
}

// removeRule deletes grant i's rule from nsg and records it; req is the
// request as its caller just read it.
func (s *Core) removeRule(ctx context.Context, req Request, i int, nsg string) error {
	ap, _, err := s.applyNSG(ctx, nsg, nsgWrite{del: allowRuleNames(req.ID, i)})
	if err != nil {
		return s.ruleFailed(ctx, req, i, nsg, ruleClose, err)
	}
	return s.recordClose(ctx, req, i, nsg, removedAny(ap, req.ID, i))
}

// removedAny reports whether ap removed one of grant i's allow rules: they
// were in the NSG until this write.
func removedAny(ap Applied, requestID string, i int) bool {
	for _, name := range allowRuleNames(requestID, i) {
		if slices.ContainsFunc(ap.Removed, func(r string) bool { return strings.EqualFold(r, name) }) {
			return true
		}
	}
	return false
}

// recordClose audits and records that grant i's rule is gone from nsg.
// removed says the close took the rule out of the NSG: if its open was
// never recorded (the worker that wrote it stopped before it could), the
// open is audited now, with the close, so that no rule that was in an NSG
// is missing from the trail.
func (s *Core) recordClose(ctx context.Context, req Request, i int, nsg string, removed bool) error {
	g := req.Grants[i]
	now := s.now()
	reason := g.StatusReason
	switch {
	case g.Status == GrantInitiating || g.Status == GrantInitiated:
		reason = ReasonExpired
	case reason == "":
		reason = g.Status
	}
	ev := AuditEvent{ID: "close-" + req.ID + "-" + itoa(i) + "-" + ShortHash(nsg), Time: now, Action: AuditClose,
		Actor: System.ID, Policy: req.Policy, Request: req.ID, VM: g.VM, NSG: nsg, Protocol: g.Protocol, Ports: g.Ports,
		Sources: g.Sources, Result: ResultSuccess, Detail: reason}
	var ended Grant
	nowDone := false
	_, err := s.mutateAudited(ctx, req.ID, func(r *Request) ([]AuditEvent, error) {
		g := &r.Grants[i]
		n, _ := g.NSG(nsg)
		wasOpen := n.State == RuleOpen || !n.OpenedAt.IsZero()
		wasDone := g.Done()
		n.State, n.ClosedAt, n.Error = RuleClosed, now, ""
		nowDone = !wasDone && g.Done()
		if g.Done() {
			switch g.Status {
			case GrantInitiating, GrantInitiated:
				g.Status, g.StatusReason = GrantClosed, ReasonExpired
			}
			if g.ClosedAt.IsZero() {
				g.ClosedAt = now
			}
		}
		ended = *g
		e := ev
		if nowDone {
			e.Notice = s.notice(EventClosed, grantOnly(*r, i), System.ID, reason)
		}
		if removed && !wasOpen {
			return []AuditEvent{s.unrecordedOpen(*r, i, nsg, now), e}, nil
		}
		return []AuditEvent{e}, nil
	})
	if err != nil {
		// The rule is gone from the NSG whatever the store says.
		_ = s.audit(ctx, ev)
		return fmt.Errorf("recording close of grant %s-%d: %w", req.ID, i, err)
	}
	lag := now.Sub(ended.End)
	s.cfg.Log.Info().Str("request", req.ID).Int("grant", i).Str("vm", g.VM).Str("nsg", nsg).Str("reason", reason).Dur("lag", lag).Bool("grantDone", nowDone).Msg("closed")
	return nil
}

// grantOnly is r narrowed to grant i, for notifications about one grant.
func grantOnly(r Request, i int) Request {
	r.Grants = []Grant{r.Grants[i]}
	return r
}

// recordRuleError keeps the last failure on the grant for people to see.
func (s *Core) recordRuleError(ctx context.Context, reqID string, i int, nsg string, cause error) {
	_, err := s.mutateRequest(ctx, reqID, func(r *Request) error {
		if n, ok := r.Grants[i].NSG(nsg); ok {
			n.Error = clip(ErrorMessage(cause), 300)
		}
		return nil
	})
	if err != nil {
		s.cfg.Log.Warn().Err(err).Str("request", reqID).Msg("recording a rule error failed")
	}
}

// unrecordedOpen is the open event of grant i's rule in nsg that a close
// found in the NSG though its open was never recorded: the worker that
// wrote it stopped before it could record it. Its id is the one the open
// would have had; it is timed just before the close that found it.
func (s *Core) unrecordedOpen(r Request, i int, nsg string, closedAt time.Time) AuditEvent {
	g := r.Grants[i]
	return AuditEvent{ID: "open-" + r.ID + "-" + itoa(i) + "-" + ShortHash(nsg), Time: closedAt.Add(-time.Microsecond), Action: AuditOpen,
		Actor: System.ID, Policy: r.Policy, Request: r.ID, VM: g.VM, NSG: nsg, Protocol: g.Protocol, Ports: g.Ports, Sources: g.Sources,
		Result: ResultSuccess, Detail: "found in the NSG when it was closed: written by a worker that stopped before recording it, open from then until " + closedAt.Format(time.RFC3339)}
}
