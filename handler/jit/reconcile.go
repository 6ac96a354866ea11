package jit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultStuckAfter is how long an open may stay pending before the sweeper
// gives up on it, marks the grant failed and makes sure nothing is open.
const DefaultStuckAfter = 5 * time.Minute

// SweepReport says what one sweep did.
type SweepReport struct {
	NSGs          int // NSGs examined
	Closed        int // rules of ended grants removed
	Orphans       int // managed allow rules no live grant owns, removed
	Repaired      int // allow rules of live grants put back or corrected
	DenyRestored  int // deny rules put back or corrected
	Stuck         int // grants marked failed because their open never happened
	ForeignBypass int // foreign rules found letting policy ports past the deny rule
}

// view is what the store says should be in the NSGs, built once per sweep.
type view struct {
	policies []Policy
	// deny rules expected per NSG (lower-case id)
	deny map[string][]denyExpectation
	// live grants per NSG (lower-case id), and every request by id
	live     map[string][]grantRef
	requests map[string]Request
}

type denyExpectation struct {
	policy string
	vm     VMPolicy
}

type grantRef struct {
	req Request
	i   int
}

// buildView reads what the NSGs should hold: the policies' deny rules and
// the live grants of the active requests.
func (s *Service) buildView(ctx context.Context) (*view, error) {
	reqs, err := s.store.ListRequests(ctx, RequestFilter{Statuses: []string{RequestActive}})
	if err != nil {
		return nil, fmt.Errorf("listing active requests: %w", err)
	}
	return s.viewOf(ctx, reqs)
}

// viewOf is buildView with the active requests listed already.
func (s *Service) viewOf(ctx context.Context, reqs []Request) (*view, error) {
	pols, err := s.store.ListPolicies(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing policies: %w", err)
	}
	v := &view{policies: pols, deny: map[string][]denyExpectation{}, live: map[string][]grantRef{}, requests: map[string]Request{}}
	for _, p := range pols {
		for _, vm := range p.VMs {
			for _, n := range vm.NSGs {
				k := strings.ToLower(n.ID)
				v.deny[k] = append(v.deny[k], denyExpectation{policy: p.Name, vm: vm})
			}
		}
	}
	for _, r := range reqs {
		v.requests[r.ID] = r
		for i, g := range r.Grants {
			for _, n := range g.NSGs {
				k := strings.ToLower(n.ID)
				v.live[k] = append(v.live[k], grantRef{req: r, i: i})
			}
		}
	}
	return v, nil
}

// Reconcile brings every NSG in scope in line with the store: what Sweep
// does for ended grants, and also removes managed allow rules no live
// grant owns, puts back deleted or altered allow and deny rules, gives up
// on opens that never happened, and reports foreign rules that let policy
// ports past the deny rule. The NSGs are listed per subscription, not
// read one by one.
func (s *Service) Reconcile(ctx context.Context) (SweepReport, error) {
	var rep SweepReport
	// Most drift is repaired at once by events; this is the backstop, and
	// on a large estate it is long: it paces itself (and the listings under
	// it) so that it does not take the CPU from requests.
	if share := s.cfg.ReconcileShare; share > 0 && share < 1 {
		ctx = WithPauses(ctx, newPacer(share).pause)
	}
	// One listing of the active requests serves the sweep and the view:
	// the sweep only closes ended grants, which the view treats as ended.
	reqs, err := s.sweepList(ctx)
	if err != nil {
		return rep, err
	}
	closed, err := s.sweepRequests(ctx, reqs)
	rep.Closed = closed
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	v, err := s.viewOf(ctx, reqs)
	if err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	nsgs, err := s.net.ListNSGs(ctx)
	if err != nil {
		s.auditFailure(ctx, System, "sweep: listing network security groups", "", "", "", "", err)
		return rep, errors.Join(append(errs, Wrap(EUNAVAILABLE, err, "listing network security groups failed"))...)
	}
	for i, n := range nsgs {
		if i%pacedNSGs == 0 {
			if err := Pause(ctx); err != nil {
				return rep, errors.Join(append(errs, err)...)
			}
		}
		rep.NSGs++
		wrote, err := s.reconcileNSG(ctx, v, n, &rep)
		if err != nil {
			errs = append(errs, err)
		}
		if wrote {
			// Judge foreign rules against the repaired NSG.
			if rules, err := s.net.ListRules(ctx, n.ID); err == nil {
				nsgs[i].Rules = rules
			}
		}
	}
	if err := s.recordFindings(ctx, v, nsgs); err != nil {
		errs = append(errs, err)
	}
	if err := Pause(ctx); err != nil {
		return rep, errors.Join(append(errs, err)...)
	}
	// Keep GET /vms answering from memory (list calls per page).
	if err := s.RefreshInventory(ctx); err != nil {
		errs = append(errs, Wrap(EUNAVAILABLE, err, "refreshing the VM inventory failed"))
	}
	if rep != (SweepReport{NSGs: rep.NSGs}) || len(errs) > 0 {
		s.cfg.Log.Info().Int("nsgs", rep.NSGs).Int("closed", rep.Closed).Int("orphans", rep.Orphans).Int("repaired", rep.Repaired).
			Int("denyRestored", rep.DenyRestored).Int("stuck", rep.Stuck).Int("foreignBypass", rep.ForeignBypass).
			Int("failed", len(errs)).Msg("reconcile")
	}
	return rep, errors.Join(errs...)
}

// ReconcileNSG reconciles one NSG at once, as an event about it asks.
func (s *Service) ReconcileNSG(ctx context.Context, nsgID string) (SweepReport, error) {
	var rep SweepReport
	v, err := s.buildView(ctx)
	if err != nil {
		return rep, err
	}
	rules, err := s.net.ListRules(ctx, nsgID)
	if ErrorCode(err) == ENOTFOUND {
		return rep, nil // deleted: nothing left to open or close there
	} else if err != nil {
		return rep, err
	}
	rep.NSGs = 1
	info := NSGInfo{ID: nsgID, Rules: rules}
	wrote, err := s.reconcileNSG(ctx, v, info, &rep)
	if wrote {
		if rules, rerr := s.net.ListRules(ctx, nsgID); rerr == nil {
			info.Rules = rules
		}
	}
	if ferr := s.recordFindings(ctx, v, []NSGInfo{info}); ferr != nil {
		err = errors.Join(err, ferr)
	}
	return rep, err
}

// reconcileNSG repairs one NSG and reports whether it wrote to it.
func (s *Service) reconcileNSG(ctx context.Context, v *view, n NSGInfo, rep *SweepReport) (bool, error) {
	before := *rep
	key := strings.ToLower(n.ID)
	now := s.now()
	present := map[string]SecurityRule{}
	for _, r := range n.Rules {
		present[strings.ToLower(r.Name)] = r
	}
	var errs []error
	// fail keeps a repair's error for the caller and audits it: a sweep that
	// cannot do its work must say so in the trail, not only in the log.
	fail := func(r Request, vm, what string, err error) {
		errs = append(errs, err)
		s.auditFailure(ctx, System, "sweep: "+what, r.Policy, r.ID, vm, n.ID, err)
	}

	// Allow rules: each must belong to a live grant that includes this NSG.
	for _, r := range n.Rules {
		reqID, idx, ok := parseRuleName(r.Name)
		if !ok {
			continue
		}
		req, known := v.requests[reqID]
		if !known {
			// Maybe newer than the view: read it before judging.
			fresh, err := s.store.GetRequest(ctx, reqID)
			if err == nil {
				req, known = fresh, true
			} else if ErrorCode(err) != ENOTFOUND {
				fail(Request{ID: reqID}, "", "reading the request of allow rule "+r.Name, err)
				continue
			}
		}
		owned := known && idx < len(req.Grants) && !req.Grants[idx].Ended(now) && req.Status == RequestActive
		if owned {
			if _, in := req.Grants[idx].NSG(n.ID); !in {
				owned = false
			}
		}
		if owned {
			continue
		}
		if err := s.deleteRule(ctx, n.ID, r.Name); err != nil {
			fail(req, "", "removing allow rule "+r.Name+" that no live grant owns", err)
			continue
		}
		rep.Orphans++
		s.drift(ctx, req, "", n.ID, "removed allow rule "+r.Name+" that no live grant owns")
		if known && idx < len(req.Grants) {
			if g := &req.Grants[idx]; g.Ended(now) {
				if gn, ok := g.NSG(n.ID); ok && gn.State != RuleClosed {
					// The rule is gone: record the close so the sweeper
					// stops coming back.
					_ = s.recordClose(ctx, req, idx, n.ID)
				}
			}
		}
	}

	// Live grants: open where they should be, give up where stuck.
	for _, ref := range v.live[key] {
		g := ref.req.Grants[ref.i]
		gn, _ := g.NSG(n.ID)
		if g.Ended(now) || gn == nil {
			continue
		}
		name := RuleName(ref.req.ID, ref.i)
		want := allowRule(ref.req, ref.i)
		switch gn.State {
		case RuleOpen:
			if have, ok := present[strings.ToLower(name)]; ok && sameRule(have, want) {
				continue
			}
			// The view may be older than the NSG listing (a paced reconcile
			// takes a while): never put back a rule whose grant has ended,
			// been revoked or closed since.
			if fresh, err := s.store.GetRequest(ctx, ref.req.ID); err != nil || !stillOpen(fresh, ref.i, n.ID, s.now()) {
				continue
			}
			if err := s.putRule(ctx, n.ID, want); err != nil {
				fail(ref.req, g.VM, "putting back allow rule "+name, err)
				continue
			}
			rep.Repaired++
			s.drift(ctx, ref.req, g.VM, n.ID, "allow rule "+name+" was deleted or changed by hand; put back")
		case RulePending:
			if now.Sub(ref.req.AcceptedAt()) < s.cfg.StuckAfter {
				continue
			}
			if err := s.giveUp(ctx, ref.req.ID, ref.i, n.ID); err != nil {
				fail(ref.req, g.VM, "giving up an open that never happened", err)
				continue
			}
			rep.Stuck++
		}
	}

	// Deny rules: one per protected VM, as the policy says.
	wantDeny := map[string]bool{}
	for _, d := range v.deny[key] {
		want := denyRule(d.policy, d.vm)
		wantDeny[strings.ToLower(want.Name)] = true
		if have, ok := present[strings.ToLower(want.Name)]; ok && sameRule(have, want) {
			continue
		}
		if err := s.putRule(ctx, n.ID, want); err != nil {
			fail(Request{Policy: d.policy}, d.vm.ID, "restoring deny rule "+want.Name, err)
			continue
		}
		rep.DenyRestored++
		s.drift(ctx, Request{Policy: d.policy}, d.vm.ID, n.ID, "deny rule "+want.Name+" was missing or changed; restored")
	}
	// Managed deny rules no policy wants (left over by an interrupted
	// policy change) go, so the NSG says exactly what the policies say.
	for _, r := range n.Rules {
		if strings.HasPrefix(strings.ToLower(r.Name), RulePrefix+"deny-") && !wantDeny[strings.ToLower(r.Name)] {
			if err := s.deleteRule(ctx, n.ID, r.Name); err != nil {
				fail(Request{}, "", "removing deny rule "+r.Name+" that no policy wants", err)
				continue
			}
			s.drift(ctx, Request{}, "", n.ID, "removed deny rule "+r.Name+" that no policy wants")
			rep.DenyRestored++
		}
	}
	return *rep != before, errors.Join(errs...)
}

// giveUp marks a grant failed whose open never happened in one NSG, and
// makes sure no rule is left.
func (s *Service) giveUp(ctx context.Context, reqID string, i int, nsg string) error {
	req, err := s.mutateRequest(ctx, reqID, func(r *Request) error {
		g := &r.Grants[i]
		if g.Status == GrantInitiating {
			g.Status, g.StatusReason = GrantFailed, "NotOpenedInTime"
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.auditFailure(ctx, System, AuditOpen, req.Policy, reqID, req.Grants[i].VM, nsg,
		Errorf(EUNAVAILABLE, "the rule was not opened within %s; the grant is marked failed", s.cfg.StuckAfter))
	return s.removeRule(ctx, req, i, nsg)
}

// parseRuleName reads the request id and grant index out of an allow
// rule's name.
func parseRuleName(name string) (string, int, bool) {
	rest, ok := strings.CutPrefix(strings.ToLower(name), RulePrefix+"allow-")
	if !ok {
		return "", 0, false
	}
	id, idx, ok := strings.Cut(rest, "-")
	if !ok || !ValidRequestID(id) {
		return "", 0, false
	}
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 {
		return "", 0, false
	}
	return id, i, true
}

// sameRule compares what matters of two rules: access, protocol, ports,
// sources and destinations (as sets), and the description.
func sameRule(a, b SecurityRule) bool {
	set := func(xs []string) []string {
		out := make([]string, len(xs))
		for i, x := range xs {
			out[i] = strings.ToLower(x)
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return strings.EqualFold(a.Access, b.Access) && strings.EqualFold(a.Protocol, b.Protocol) &&
		slices.Equal(set(a.Ports), set(b.Ports)) && slices.Equal(set(a.Sources), set(b.Sources)) &&
		slices.Equal(set(a.Destinations), set(b.Destinations)) && a.Description == b.Description
}

// drift audits a difference found between the NSGs and the store, and
// notifies. Its id is unique per finding, so a repeated event audits twice
// only when the drift happened twice.
func (s *Service) drift(ctx context.Context, r Request, vm, nsg, detail string) {
	s.cfg.Log.Warn().Str("nsg", nsg).Str("vm", vm).Str("request", r.ID).Msg(detail)
	_ = s.audit(ctx, AuditEvent{Action: AuditDrift, Actor: System.ID, Policy: r.Policy, Request: r.ID, VM: vm, NSG: nsg,
		Result: ResultSuccess, Detail: clip(detail, 500)})
	if s.cfg.Notifier != nil {
		n := Notification{Event: EventDrift, Time: s.now(), Request: r.ID, Policy: r.Policy, Actor: System.ID, Detail: clip(detail, 500)}
		if vm != "" {
			n.VMs = []string{vm}
		}
		s.cfg.Notifier.Notify(n)
	}
}

// pacedNSGs is how many NSGs Reconcile compares between pauses.
const pacedNSGs = 50

// stillOpen reports whether grant i of r is live and its rule in nsgID is
// recorded open.
func stillOpen(r Request, i int, nsgID string, now time.Time) bool {
	if r.Status != RequestActive || i >= len(r.Grants) || r.Grants[i].Ended(now) {
		return false
	}
	gn, _ := r.Grants[i].NSG(nsgID)
	return gn != nil && gn.State == RuleOpen
}
