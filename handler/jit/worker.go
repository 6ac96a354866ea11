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

// openMargin is how long before its end a grant is no longer opened (a
// quarter of its length for grants shorter than 8 s): an NSG write takes
// seconds in Azure, so a later open would land after the end (and be
// removed again by its close).
const openMargin = 2 * time.Second

// closeEarly lets a scheduled close that arrives a moment before the end
// time (clock skew between queue and worker) still close.
const closeEarly = time.Second

// ruleAction is what an operation needs done to its rule.
type ruleAction int

const (
	ruleNothing ruleAction = iota
	ruleOpen
	ruleClose
)

// planOperation reads op's request and decides what op needs: an open of a
// grant that has ended closes, an open of an open rule, a close of a live
// grant and a close of a closed rule need nothing. nsg is the NSG's id as
// the grant spells it.
func (s *Service) planOperation(ctx context.Context, op Operation) (req Request, act ruleAction, nsg string, err error) {
	req, err = s.store.GetRequest(ctx, op.RequestID)
	if ErrorCode(err) == ENOTFOUND {
		s.cfg.Log.Warn().Str("request", op.RequestID).Str("op", op.Kind).Msg("operation for an unknown request dropped")
		return req, ruleNothing, "", nil
	} else if err != nil {
		return req, ruleNothing, "", fmt.Errorf("reading request: %w", err)
	}
	if op.Grant < 0 || op.Grant >= len(req.Grants) {
		s.cfg.Log.Warn().Str("request", op.RequestID).Int("grant", op.Grant).Msg("operation for an unknown grant dropped")
		return req, ruleNothing, "", nil
	}
	g := &req.Grants[op.Grant]
	n, ok := g.NSG(op.NSG)
	if !ok {
		s.cfg.Log.Warn().Str("request", op.RequestID).Str("nsg", op.NSG).Msg("operation for an unknown NSG dropped")
		return req, ruleNothing, "", nil
	}
	now := s.now()
	closeUnlessClosed := ruleClose
	if n.State == RuleClosed {
		closeUnlessClosed = ruleNothing
	}
	switch op.Kind {
	case OpOpen:
		switch req.Status {
		case RequestPending, RequestDenied, RequestExpired:
			// Nothing was approved, so nothing opens, whoever queued this.
			s.cfg.Log.Warn().Str("request", req.ID).Str("status", req.Status).Msg("open of a request that is not approved dropped")
			return req, ruleNothing, n.ID, nil
		}
		if g.Ended(now.Add(min(openMargin, g.End.Sub(req.StartTime)/4))) {
			// Ended, or ending before an NSG write would be in force: an
			// open now would land after the end.
			return req, closeUnlessClosed, n.ID, nil
		}
		if n.State == RuleOpen {
			return req, ruleNothing, n.ID, nil
		}
		return req, ruleOpen, n.ID, nil
	case OpClose:
		if !g.Ended(now.Add(closeEarly)) {
			return req, ruleNothing, n.ID, nil // extended, or an old schedule: a newer close is queued
		}
		return req, closeUnlessClosed, n.ID, nil
	}
	s.cfg.Log.Warn().Str("op", op.Kind).Msg("operation of unknown kind dropped")
	return req, ruleNothing, "", nil
}

// maxBatch bounds how many grants one NSG write opens or closes, so that a
// burst is cut into NSG writes of a reasonable size.
const maxBatch = 200

// ApplyOperations applies ops, which must all name the same NSG, with one
// ARM write for all of them (and the NSG's lockdown, which every write
// brings in line): each op is decided as planOperation decides it, the
// rules to open and to remove go to one RuleChange, and then each op is
// recorded. It returns one error per op; when the write fails, every op
// that needed it fails.
func (s *Service) ApplyOperations(ctx context.Context, ops []Operation) []error {
	errs := make([]error, len(ops))
	if len(ops) == 0 {
		return errs
	}
	type step struct {
		op  int
		req Request
		act ruleAction
		nsg string
	}
	var steps []step
	nsg := ops[0].NSG
	var syncs []int // the sync operations: done when a write carried the lockdown
	for k, op := range ops {
		if !SameID(op.NSG, nsg) {
			errs[k] = Errorf(EINTERNAL, "operation %s is for NSG %s, not %s like the rest of its batch", op.ID, op.NSG, nsg)
			continue
		}
		if op.Kind == OpSync {
			syncs = append(syncs, k)
			continue
		}
		req, act, n, err := s.planOperation(ctx, op)
		if err != nil {
			errs[k] = err
			continue
		}
		if act != ruleNothing {
			steps = append(steps, step{k, req, act, n})
		}
	}
	// failSyncs fails the sync operations when the lockdown was not
	// written: they come again.
	failSyncs := func(lockErr error) {
		if lockErr == nil {
			return
		}
		err := fmt.Errorf("bringing the deny rules of NSG %s in line: %w", nsg, lockErr)
		for _, k := range syncs {
			errs[k] = err
		}
	}
	if len(steps) == 0 {
		if len(syncs) > 0 {
			_, lockErr, _ := s.applyNSG(ctx, nsg, nsgWrite{})
			failSyncs(lockErr)
		}
		return errs
	}
	for start := 0; start < len(steps); start += maxBatch {
		batch := steps[start:min(start+maxBatch, len(steps))]
		var w nsgWrite
		removed := map[string]bool{}
		for _, st := range batch {
			if st.act == ruleClose {
				removed[RuleName(st.req.ID, ops[st.op].Grant)] = true
				w.del = append(w.del, allowRuleNames(st.req.ID, ops[st.op].Grant)...)
			}
		}
		for i, st := range batch {
			if st.act != ruleOpen {
				continue
			}
			if removed[RuleName(st.req.ID, ops[st.op].Grant)] {
				// The same batch also closes it: the grant is ending.
				batch[i].act = ruleClose
				continue
			}
			w.put = append(w.put, s.allowRules(st.req, ops[st.op].Grant)...)
		}
		ap, lockErr, err := s.applyNSG(ctx, batch[0].nsg, w)
		failSyncs(lockErr)
		if err != nil {
			for _, st := range batch {
				errs[st.op] = s.ruleFailed(ctx, st.req, ops[st.op].Grant, st.nsg, st.act, err)
			}
			continue
		}
		// Record the outcomes of different requests at once, so their writes
		// share commits; one request's grants one after the other.
		byReq := map[string][]step{}
		var order []string
		for _, st := range batch {
			if _, ok := byReq[st.req.ID]; !ok {
				order = append(order, st.req.ID)
			}
			byReq[st.req.ID] = append(byReq[st.req.ID], st)
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, recordParallel)
		for _, id := range order {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				for _, st := range byReq[id] {
					if st.act == ruleOpen {
						errs[st.op] = s.recordOpen(ctx, st.req, ops[st.op].Grant, st.nsg)
					} else {
						errs[st.op] = s.recordClose(ctx, st.req, ops[st.op].Grant, st.nsg, removedAny(ap, st.req.ID, ops[st.op].Grant))
					}
				}
			})
		}
		wg.Wait()
	}
	return errs
}

// recordParallel is how many requests one NSG write's outcomes are recorded
// on at once.
const recordParallel = 16

// ruleFailed records a failed open or close on the grant and in the audit
// trail, and returns the error to retry with.
func (s *Service) ruleFailed(ctx context.Context, req Request, i int, nsg string, act ruleAction, cause error) error {
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
func (s *Service) recordOpen(ctx context.Context, req Request, i int, nsg string) error {
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
func (s *Service) removeRule(ctx context.Context, req Request, i int, nsg string) error {
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
func (s *Service) recordClose(ctx context.Context, req Request, i int, nsg string, removed bool) error {
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

// sweepParallel is how many NSGs a sweep works on at once. Within one NSG
// the closes go in one write, as ARM wants one writer per NSG.
const sweepParallel = 8

// Sweep closes every grant that has ended but whose rules are not known to
// be gone. It runs at start-up and periodically, so access ends even when
// a close operation was lost.
func (s *Service) Sweep(ctx context.Context) (closed int, err error) {
	reqs, err := s.sweepList(ctx)
	if err != nil {
		return 0, err
	}
	return s.sweepRequests(ctx, reqs)
}

// sweepList completes the audit trail, expires pending requests that
// waited too long and lists the active ones.
func (s *Service) sweepList(ctx context.Context) ([]Request, error) {
	if n, err := s.store.RecoverAudit(ctx); err != nil {
		s.cfg.Log.Warn().Err(err).Int("completed", n).Msg("completing the audit trail failed; the next sweep retries")
	} else if n > 0 {
		s.cfg.Log.Warn().Int("changes", n).Msg("audit events of interrupted writes appended to the trail")
	}
	// Notifications that no running delivery took (the instance that
	// stored them stopped, or their receiver failed) go out now.
	s.kickNotices()
	if _, err := s.expirePending(ctx); err != nil {
		s.cfg.Log.Warn().Err(err).Msg("expiring pending requests failed; the next sweep retries")
	}
	reqs, err := s.store.ListRequests(ctx, RequestFilter{Statuses: []string{RequestActive}})
	if err != nil {
		return nil, fmt.Errorf("listing active requests: %w", err)
	}
	return reqs, nil
}

// sweepRequests closes the ended grants of reqs whose rules are not known
// to be gone.
func (s *Service) sweepRequests(ctx context.Context, reqs []Request) (closed int, err error) {
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
			// One NSG write removes all of them (ApplyOperations cuts
			// bursts into writes of maxBatch rules).
			ops := make([]Operation, len(jobs))
			for k, j := range jobs {
				ops[k] = Operation{ID: OperationID(OpClose, j.req, j.i, j.nsg, now), Kind: OpClose, RequestID: j.req, Grant: j.i, NSG: j.nsg}
			}
			results := s.ApplyOperations(ctx, ops)
			mu.Lock()
			for _, err := range results {
				if err != nil {
					errs = append(errs, err)
				} else {
					closed++
				}
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if closed > 0 || len(errs) > 0 {
		s.cfg.Log.Info().Int("closed", closed).Int("failed", len(errs)).Msg("sweep")
	}
	return closed, errors.Join(errs...)
}

// unrecordedOpen is the open event of grant i's rule in nsg that a close
// found in the NSG though its open was never recorded: the worker that
// wrote it stopped before it could record it. Its id is the one the open
// would have had; it is timed just before the close that found it.
func (s *Service) unrecordedOpen(r Request, i int, nsg string, closedAt time.Time) AuditEvent {
	g := r.Grants[i]
	return AuditEvent{ID: "open-" + r.ID + "-" + itoa(i) + "-" + ShortHash(nsg), Time: closedAt.Add(-time.Microsecond), Action: AuditOpen,
		Actor: System.ID, Policy: r.Policy, Request: r.ID, VM: g.VM, NSG: nsg, Protocol: g.Protocol, Ports: g.Ports, Sources: g.Sources,
		Result: ResultSuccess, Detail: "found in the NSG when it was closed: written by a worker that stopped before recording it, open from then until " + closedAt.Format(time.RFC3339)}
}
