package jit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// WorkerFunc adapts a function to the Worker interface.
type WorkerFunc func(ctx context.Context, op Operation) error

// ApplyOperation calls f.
func (f WorkerFunc) ApplyOperation(ctx context.Context, op Operation) error { return f(ctx, op) }

// closeEarly lets a scheduled close that arrives a moment before the end
// time (clock skew between queue and worker) still close.
const closeEarly = time.Second

// ApplyOperation opens or closes one grant's allow rule in one NSG. It is
// idempotent and safe out of order: an open of a grant that has ended
// removes the rule instead, a close of a grant that was extended does
// nothing, a second open or close of the same rule makes no ARM write.
func (s *Service) ApplyOperation(ctx context.Context, op Operation) error {
	req, err := s.store.GetRequest(ctx, op.RequestID)
	if ErrorCode(err) == ENOTFOUND {
		s.cfg.Log.Warn().Str("request", op.RequestID).Str("op", op.Kind).Msg("operation for an unknown request dropped")
		return nil
	} else if err != nil {
		return fmt.Errorf("reading request: %w", err)
	}
	if op.Grant < 0 || op.Grant >= len(req.Grants) {
		s.cfg.Log.Warn().Str("request", op.RequestID).Int("grant", op.Grant).Msg("operation for an unknown grant dropped")
		return nil
	}
	g := &req.Grants[op.Grant]
	n, ok := g.NSG(op.NSG)
	if !ok {
		s.cfg.Log.Warn().Str("request", op.RequestID).Str("nsg", op.NSG).Msg("operation for an unknown NSG dropped")
		return nil
	}
	now := s.now()
	switch op.Kind {
	case OpOpen:
		if g.Ended(now) {
			return s.closeRule(ctx, req, op.Grant, n.ID)
		}
		if n.State == RuleOpen {
			return nil
		}
		return s.openRule(ctx, req, op.Grant, n.ID)
	case OpClose:
		if !g.Ended(now.Add(closeEarly)) {
			return nil // extended, or an old schedule: a newer close is queued
		}
		return s.closeRule(ctx, req, op.Grant, n.ID)
	}
	s.cfg.Log.Warn().Str("op", op.Kind).Msg("operation of unknown kind dropped")
	return nil
}

func (s *Service) openRule(ctx context.Context, req Request, i int, nsg string) error {
	g := req.Grants[i]
	if err := s.net.PutRule(ctx, nsg, allowRule(req, i)); err != nil {
		s.recordRuleError(ctx, req.ID, i, nsg, err)
		s.auditFailure(ctx, System, AuditOpen, req.Policy, req.ID, g.VM, nsg, err)
		return fmt.Errorf("opening grant %s-%d in %s: %w", req.ID, i, nsg, err)
	}
	now := s.now()
	// Audit before recording the open (see removeRule).
	if err := s.audit(ctx, AuditEvent{ID: "open-" + req.ID + "-" + itoa(i) + "-" + ShortHash(nsg), Time: now, Action: AuditOpen,
		Actor: System.ID, Policy: req.Policy, Request: req.ID, VM: g.VM, NSG: nsg, Protocol: g.Protocol, Ports: g.Ports,
		Sources: g.Sources, Result: ResultSuccess, Detail: "until " + g.End.Format(time.RFC3339)}); err != nil {
		return err
	}
	endedMeanwhile, nowOpen := false, false
	updated, err := s.mutateRequest(ctx, req.ID, func(r *Request) error {
		endedMeanwhile, nowOpen = false, false
		g := &r.Grants[i]
		n, _ := g.NSG(nsg)
		if n.State == RuleClosed || g.Ended(now) {
			endedMeanwhile = true
			return nil
		}
		n.State, n.OpenedAt, n.Error = RuleOpen, now, ""
		if g.Status == GrantInitiating && allOpen(g) {
			g.Status, nowOpen = GrantInitiated, true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording open of grant %s-%d: %w", req.ID, i, err)
	}
	if endedMeanwhile {
		// Revoked or expired while the rule was being written: take it away again.
		return s.removeRule(ctx, req.ID, i, nsg)
	}
	s.cfg.Log.Info().Str("request", req.ID).Int("grant", i).Str("vm", g.VM).Str("nsg", nsg).Msg("opened")
	if nowOpen {
		s.notify(EventOpened, grantOnly(updated, i), System.ID, "")
	}
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

// closeRule removes a grant's rule from one NSG unless it is known closed.
func (s *Service) closeRule(ctx context.Context, req Request, i int, nsg string) error {
	if n, _ := req.Grants[i].NSG(nsg); n.State == RuleClosed {
		return nil
	}
	return s.removeRule(ctx, req.ID, i, nsg)
}

func (s *Service) removeRule(ctx context.Context, reqID string, i int, nsg string) error {
	req, err := s.store.GetRequest(ctx, reqID)
	if err != nil {
		return fmt.Errorf("reading request: %w", err)
	}
	g := req.Grants[i]
	if err := s.net.DeleteRule(ctx, nsg, RuleName(req.ID, i)); err != nil {
		s.recordRuleError(ctx, req.ID, i, nsg, err)
		s.auditFailure(ctx, System, AuditClose, req.Policy, req.ID, g.VM, nsg, err)
		return fmt.Errorf("closing grant %s-%d in %s: %w", req.ID, i, nsg, err)
	}
	now := s.now()
	reason := g.StatusReason
	switch {
	case g.Status == GrantInitiating || g.Status == GrantInitiated:
		reason = ReasonExpired
	case reason == "":
		reason = g.Status
	}
	// Audit before recording the close: a crash in between runs the close
	// again, and the append, keyed by the same id, keeps one event.
	if err := s.audit(ctx, AuditEvent{ID: "close-" + req.ID + "-" + itoa(i) + "-" + ShortHash(nsg), Time: now, Action: AuditClose,
		Actor: System.ID, Policy: req.Policy, Request: req.ID, VM: g.VM, NSG: nsg, Protocol: g.Protocol, Ports: g.Ports,
		Sources: g.Sources, Result: ResultSuccess, Detail: reason}); err != nil {
		return err
	}
	var ended Grant
	nowDone := false
	updated, err := s.mutateRequest(ctx, req.ID, func(r *Request) error {
		g := &r.Grants[i]
		n, _ := g.NSG(nsg)
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
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording close of grant %s-%d: %w", req.ID, i, err)
	}
	lag := now.Sub(ended.End)
	s.cfg.Log.Info().Str("request", req.ID).Int("grant", i).Str("vm", g.VM).Str("nsg", nsg).Str("reason", reason).Dur("lag", lag).Msg("closed")
	if nowDone {
		s.notify(EventClosed, grantOnly(updated, i), System.ID, reason)
	}
	return nil
}

// grantOnly is r narrowed to grant i, for notifications about one grant.
func grantOnly(r Request, i int) Request {
	r.Grants = []Grant{r.Grants[i]}
	return r
}

// recordRuleError keeps the last failure on the grant for people to see.
func (s *Service) recordRuleError(ctx context.Context, reqID string, i int, nsg string, cause error) {
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

// Revoke ends a request's live grants now. The requestor may revoke their
// own request; JIT.Admin any.
func (s *Service) Revoke(ctx context.Context, p Principal, id string) (Request, error) {
	if err := requireRole(p, RoleRequester, "revoking access"); err != nil {
		return Request{}, err
	}
	return s.revoke(ctx, p, id, "", ReasonUserRequested)
}

// revoke ends the live grants of request id (only those of vm when vm is
// not empty), queues their closes and cancels their scheduled closes.
func (s *Service) revoke(ctx context.Context, p Principal, id, vm, reason string) (Request, error) {
	r, err := s.getRequest(ctx, id)
	if err != nil {
		return Request{}, err
	}
	if r.Requestor != p.ID && !p.Has(RoleAdmin) {
		return Request{}, Errorf(EFORBIDDEN, "only the requestor or a JIT.Admin may revoke request %s", id)
	}
	now := s.now()
	var ops []Operation
	var tickets []string
	var revoked []Grant
	updated, err := s.mutateRequest(ctx, id, func(r *Request) error {
		ops, tickets, revoked = nil, nil, nil
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
				if n.CloseTicket != "" {
					tickets = append(tickets, n.CloseTicket)
				}
			}
		}
		if len(ops) == 0 {
			return Errorf(ECONFLICT, "request %s has no open access left to revoke", id)
		}
		return nil
	})
	if err != nil {
		return Request{}, err
	}
	for _, g := range revoked {
		if err := s.audit(ctx, AuditEvent{Action: AuditRevoke, Actor: p.ID, Policy: r.Policy, Request: id, VM: g.VM,
			Protocol: g.Protocol, Ports: g.Ports, Sources: g.Sources, Result: ResultSuccess, Detail: reason}); err != nil {
			return Request{}, err
		}
	}
	s.notify(EventRevoked, updated, p.ID, reason)
	if len(ops) == 0 {
		return updated, nil
	}
	if _, err := s.queue.Enqueue(ctx, ops); err != nil {
		// The grants are marked revoked: the sweeper removes the rules.
		s.auditFailure(ctx, p, AuditRevoke, r.Policy, id, vm, "", err)
		return updated, nil
	}
	if err := s.queue.Cancel(ctx, tickets); err != nil {
		s.cfg.Log.Warn().Err(err).Str("request", id).Msg("cancelling scheduled closes failed; they will be no-ops")
	}
	s.cfg.Log.Info().Str("request", id).Str("actor", p.ID).Str("reason", reason).Msg("revoked")
	return updated, nil
}

// sweepParallel is how many NSGs a sweep works on at once. Within one NSG
// the closes stay serial, as ARM wants one writer per NSG.
const sweepParallel = 8

// Sweep closes every grant that has ended but whose rules are not known to
// be gone. It runs at start-up and periodically, so access ends even when
// a close operation was lost.
func (s *Service) Sweep(ctx context.Context) (closed int, err error) {
	if _, err := s.expirePending(ctx); err != nil {
		s.cfg.Log.Warn().Err(err).Msg("expiring pending requests failed; the next sweep retries")
	}
	reqs, err := s.store.ListRequests(ctx, RequestFilter{Statuses: []string{RequestActive}})
	if err != nil {
		return 0, fmt.Errorf("listing active requests: %w", err)
	}
	now := s.now()
	type job struct {
		req string
		i   int
		nsg string
		end time.Time
	}
	byNSG := map[string][]job{}
	for _, r := range reqs {
		for i := range r.Grants {
			g := &r.Grants[i]
			if !g.Ended(now) {
				continue
			}
			for _, n := range g.NSGs {
				if n.State != RuleClosed {
					k := strings.ToLower(n.ID)
					byNSG[k] = append(byNSG[k], job{r.ID, i, n.ID, g.End})
				}
			}
		}
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
		sem  = make(chan struct{}, sweepParallel)
	)
	for _, jobs := range byNSG {
		// The longest overdue first: they bound the lag.
		slices.SortFunc(jobs, func(a, b job) int { return a.end.Compare(b.end) })
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			for _, j := range jobs {
				err := s.removeRule(ctx, j.req, j.i, j.nsg)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					closed++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if closed > 0 || len(errs) > 0 {
		s.cfg.Log.Info().Int("closed", closed).Int("failed", len(errs)).Msg("sweep")
	}
	return closed, errors.Join(errs...)
}
