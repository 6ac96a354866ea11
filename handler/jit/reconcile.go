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
	// live grants per NSG (lower-case id), and every request by id
	live     map[string][]grantRef
	requests map[string]Request
	// states are the NSGs' stored states, and guarded the NSGs (lower-case
	// ids) some policy's VM is behind.
	states  map[string]NSGState
	guarded map[string]bool
}

type grantRef struct {
	req Request
	i   int
}

// buildView reads what the NSGs should hold: the policies' deny rules and
// the live grants of the active requests.
func (s *Reconciler) buildView(ctx context.Context) (*view, error) {
	reqs, err := s.store.ListRequests(ctx, RequestFilter{Statuses: []string{RequestActive}})
	if err != nil {
		return nil, fmt.Errorf("listing active requests: %w", err)
	}
	return s.viewOf(ctx, reqs)
}

// viewOf is buildView with the active requests listed already.
func (s *Reconciler) viewOf(ctx context.Context, reqs []Request) (*view, error) {
	pols, err := s.store.ListPolicies(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing policies: %w", err)
	}
	states, err := s.store.ListNSGStates(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing NSG states: %w", err)
	}
	v := &view{policies: pols, live: map[string][]grantRef{}, requests: map[string]Request{},
		states: map[string]NSGState{}, guarded: map[string]bool{}}
	for _, st := range states {
		v.states[strings.ToLower(st.ID)] = st
	}
	for _, n := range nsgsOf(pols...) {
		v.guarded[strings.ToLower(n)] = true
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
func (s *Reconciler) Reconcile(ctx context.Context) (SweepReport, error) {
	var rep SweepReport
	// Most drift is repaired at once by events; this is the backstop, and
	// on a large estate it is long: it paces itself (the listings it is
	// handed and its work on each NSG) by the process's CPU time, not by
	// the time it waits on Azure, so that it does not take the CPU from
	// requests.
	var pace *pacer
	if share := s.cfg.ReconcileShare; share > 0 && share < 1 {
		pace = newPacer(share)
	}
	// One listing of the active requests serves the sweep and the view:
	// the sweep only closes ended grants, which the view treats as ended.
	// The closes themselves are not paced: access must end on time.
	reqs, err := s.sweepList(ctx, pace)
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
	listedAt := s.now()  // what the listing shows is as of its start
	var listed []NSGInfo // ids only: finishAllDeletions needs no rules
	err = s.net.ScanNSGs(ctx, paced(ctx, pace, func(n NSGInfo) error {
		rep.NSGs++
		listed = append(listed, NSGInfo{ID: n.ID})
		if err := s.reconcileNSG(ctx, v, n, listedAt, &rep); err != nil {
			errs = append(errs, err)
		}
		return nil
	}))
	if err != nil {
		if ctx.Err() != nil { // stopped, not failed
			return rep, errors.Join(append(errs, err)...)
		}
		s.auditFailure(ctx, System, "sweep: listing network security groups", "", "", "", "", err)
		return rep, errors.Join(append(errs, Wrap(EUNAVAILABLE, err, "listing network security groups failed"))...)
	}
	if err := s.finishAllDeletions(ctx, listed); err != nil {
		errs = append(errs, err)
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
func (s *Reconciler) ReconcileNSG(ctx context.Context, nsgID string) (SweepReport, error) {
	var rep SweepReport
	v, err := s.buildView(ctx)
	if err != nil {
		return rep, err
	}
	listedAt := s.now()
	rules, err := s.net.ListRules(ctx, nsgID)
	if ErrorCode(err) == ENOTFOUND {
		// Deleted: nothing left to open or close there.
		if _, perr := s.store.PutNSGState(ctx, NSGState{ID: nsgID, SeenAt: listedAt, Missing: true}); perr != nil {
			return rep, perr
		}
		return rep, nil
	} else if err != nil {
		return rep, err
	}
	rep.NSGs = 1
	err = s.reconcileNSG(ctx, v, NSGInfo{ID: nsgID, Rules: rules}, listedAt, &rep)
	return rep, err
}

// finishAllDeletions finishes the deletions of policies whose deny rules
// are gone everywhere, as the sweep saw; an NSG of theirs the listing did
// not show (deleted) is written once, which records it missing.
func (s *Reconciler) finishAllDeletions(ctx context.Context, listed []NSGInfo) error {
	pols, err := s.store.ListPolicies(ctx)
	if err != nil {
		return fmt.Errorf("listing policies: %w", err)
	}
	var deleting []Policy
	for _, p := range pols {
		if p.State == PolicyDeleting {
			deleting = append(deleting, p)
		}
	}
	if len(deleting) == 0 {
		return nil
	}
	seen := map[string]bool{}
	for _, n := range listed {
		seen[strings.ToLower(n.ID)] = true
	}
	var errs []error
	for _, n := range nsgsOf(deleting...) {
		if !seen[strings.ToLower(n)] {
			if _, lockErr, _ := s.applyNSG(ctx, n, nsgWrite{}); lockErr != nil {
				err := lockErr
				errs = append(errs, err)
			}
		}
	}
	states, err := s.store.ListNSGStates(ctx)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("listing NSG states: %w", err))...)
	}
	byID := map[string]NSGState{}
	for _, st := range states {
		byID[strings.ToLower(st.ID)] = st
	}
	s.finishDeletions(ctx, deleting, byID)
	return errors.Join(errs...)
}

// reportBypasses audits, once, each foreign rule that a new state of an NSG
// shows letting a policy port in ahead of the deny rule, and counts them.
func (s *Reconciler) reportBypasses(ctx context.Context, v *view, prev, next NSGState, rep *SweepReport) {
	for _, p := range v.policies {
		for _, vm := range p.VMs {
			if !vm.guardedBy(next.ID) {
				continue
			}
			was := bypasses(vm, prev)
			for _, text := range bypasses(vm, next) {
				rep.ForeignBypass++
				if !slices.Contains(was, text) {
					s.drift(ctx, Request{Policy: p.Name}, vm.ID, next.ID, text)
				}
			}
		}
	}
}

// reconcileNSG brings one NSG in line with the store in at most one write:
// allow rules no live grant owns go, deleted or changed allow rules of live
// grants come back, opens that never happened are given up, and the deny
// rules are what the policies say (applyNSG). When nothing differs it
// writes nothing and reads nothing more; the NSG's state is recorded
// either way.
func (s *Reconciler) reconcileNSG(ctx context.Context, v *view, n NSGInfo, listedAt time.Time, rep *SweepReport) error {
	key := strings.ToLower(n.ID)
	now := s.now()
	o := s.owner()
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
	var w nsgWrite
	type closed struct {
		req Request
		i   int
	}
	var closes []closed
	var orphans []string
	type repair struct {
		req  Request
		name string
	}
	var repairs []repair

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
		if !known && !o.Owns(r) {
			// A request this deployment never issued: another deployment's
			// rule, a legacy rule it cannot place, or someone's rule named
			// like ours: left alone (and reported if it bypasses a lockdown).
			continue
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
		w.del = append(w.del, r.Name)
		orphans = append(orphans, r.Name)
		if known && idx < len(req.Grants) {
			if g := &req.Grants[idx]; g.Ended(now) {
				if gn, ok := g.NSG(n.ID); ok && gn.State != RuleClosed {
					// The rule goes: record the close so the sweeper stops
					// coming back.
					closes = append(closes, closed{req, idx})
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
		switch gn.State {
		case RuleOpen:
			if s.rulesIntact(present, ref.req, ref.i) {
				continue
			}
			want := s.allowRules(ref.req, ref.i)
			// The view may be older than the NSG listing (a paced reconcile
			// takes a while): never put back a rule whose grant has ended,
			// been revoked or closed since.
			if fresh, err := s.store.GetRequest(ctx, ref.req.ID); err != nil || !stillOpen(fresh, ref.i, n.ID, s.now()) {
				continue
			}
			w.put = append(w.put, want...)
			repairs = append(repairs, repair{ref.req, RuleName(ref.req.ID, ref.i)})
		case RulePending:
			if s.rulesIntact(present, ref.req, ref.i) {
				// In the NSG, though not recorded: written by a worker
				// that stopped before recording it. It is open.
				if err := s.recordOpen(ctx, ref.req, ref.i, n.ID); err != nil {
					fail(ref.req, g.VM, "recording an open found in the NSG", err)
				}
				continue
			}
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

	// Deny rules: only a difference from what the policies want costs a
	// write (applyNSG writes them with the rest).
	ld := s.lockdownOf(v.policies, n.ID)
	lockdownOK := true
	for _, want := range ld.rules {
		if have, ok := present[strings.ToLower(want.Name)]; !ok || !s.sameRule(have, want) {
			lockdownOK = false
		}
	}
	prune := ld.prune(o)
	for _, r := range n.Rules {
		if prune(r) {
			lockdownOK = false
		}
	}

	prev := v.states[key]
	// What the listing shows is what was last seen, whether or not the
	// repair below succeeds.
	seen := s.stateOf(n.ID, n.Rules, false, listedAt)
	s.noteNSG(ctx, v, seen)
	if lockdownOK && len(w.put) == 0 && len(w.del) == 0 {
		s.reportBypasses(ctx, v, prev, seen, rep)
		return errors.Join(errs...)
	}
	ap, lockErr, err := s.applyNSG(ctx, n.ID, w)
	if err == nil && lockErr != nil {
		// The grants went in; the lockdown did not, and stays recorded failed.
		errs = append(errs, lockErr)
	}
	if err != nil {
		fail(Request{}, "", "bringing NSG "+ResourceName(n.ID)+" in line", err)
		return errors.Join(errs...)
	}
	for _, c := range closes {
		_ = s.recordClose(ctx, c.req, c.i, n.ID, removedAny(ap, c.req.ID, c.i))
	}
	for _, name := range orphans {
		rep.Orphans++
		s.drift(ctx, Request{}, "", n.ID, "removed allow rule "+name+" that no live grant owns")
	}
	for _, r := range repairs {
		rep.Repaired++
		s.drift(ctx, r.req, "", n.ID, "allow rule "+r.name+" was deleted or changed by hand; put back")
	}
	// Deny rules written because a policy changed since the NSG was last
	// seen are a lockdown catching up (audited per VM as lockdown or
	// unlock), not drift; so are per-VM rules of earlier versions migrated.
	catchingUp := !prev.SeenAt.IsZero() && v.changedSince(n.ID, prev.SeenAt) || prev.SeenAt.IsZero()
	for _, names := range [][]string{ap.Created, ap.Updated, ap.Removed} {
		for _, name := range names {
			if strings.HasPrefix(strings.ToLower(name), RulePrefix+"deny-") && !catchingUp {
				rep.DenyRestored++
				s.drift(ctx, Request{}, "", n.ID, "deny rule "+name+" was missing, changed or no longer wanted; brought in line with the policies")
			}
		}
	}
	s.reportBypasses(ctx, v, prev, s.stateOf(n.ID, ap.Rules, ap.Missing, now), rep)
	return errors.Join(errs...)
}

// sameRule compares two rules on everything ARM stores of them but the
// priority, which must lie within the band of the wanted rule's access.
func (s *Core) sameRule(have, want SecurityRule) bool {
	set := func(xs []string) []string {
		out := make([]string, 0, len(xs))
		for _, x := range xs {
			out = append(out, strings.ToLower(x))
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	anyIfEmpty := func(xs []string) []string {
		if len(xs) == 0 {
			return []string{"*"}
		}
		return xs
	}
	band := s.cfg.AllowBand
	if want.Access == AccessDeny {
		band = s.cfg.DenyBand
	}
	return strings.EqualFold(have.Access, want.Access) && strings.EqualFold(have.Protocol, want.Protocol) &&
		have.Priority >= band.Min && have.Priority <= band.Max &&
		slices.Equal(set(anyIfEmpty(have.SourcePorts)), set(anyIfEmpty(want.SourcePorts))) &&
		slices.Equal(set(have.Ports), set(want.Ports)) && slices.Equal(set(have.Sources), set(want.Sources)) &&
		slices.Equal(set(have.Destinations), set(want.Destinations)) &&
		len(have.SourceASGs)+len(have.DestinationASGs) == 0 && have.Description == want.Description
}

// noteNSG records what a listing showed of an NSG that needed no write,
// when it differs from its stored state, and audits a lockdown that began
// or ended since the state stored: one whose write was made but whose
// state could not be recorded then (recordNSG audits the others).
func (s *Reconciler) noteNSG(ctx context.Context, v *view, st NSGState) {
	n := st
	if old, ok := v.states[strings.ToLower(n.ID)]; ok && !old.Failing() && sameState(old, st) && !v.changedSince(n.ID, old.SeenAt) {
		return
	}
	if len(st.Deny) == 0 && len(st.Ahead) == 0 && !v.guarded[strings.ToLower(n.ID)] {
		if _, ok := v.states[strings.ToLower(n.ID)]; !ok {
			return // an NSG JIT has nothing to do with
		}
	}
	prev, err := s.store.PutNSGState(ctx, st)
	if err != nil {
		s.cfg.Log.Warn().Err(err).Str("nsg", n.ID).Msg("recording the NSG's state failed")
		return
	}
	// Compared with what is stored now: a listing older than the stored
	// state (a lockdown written while this sweep ran) changed nothing.
	s.auditLockdownChanges(ctx, v.policies, n.ID, prev, prev.Merge(st))
}

// changedSince reports whether a policy with a VM behind the NSG changed
// after t: a state seen before it says the lockdown is pending, so it must
// be seen again even when its rules are the same.
func (v *view) changedSince(nsgID string, t time.Time) bool {
	for _, p := range v.policies {
		if !p.UpdatedAt.After(t) {
			continue
		}
		for _, vm := range p.VMs {
			if vm.guardedBy(nsgID) {
				return true
			}
		}
	}
	return false
}

// sameState reports whether two states saw the same rules.
func sameState(a, b NSGState) bool {
	same := func(x, y []SecurityRule) bool {
		return slices.EqualFunc(x, y, func(p, q SecurityRule) bool {
			return p.Name == q.Name && p.Priority == q.Priority && p.Access == q.Access && p.Protocol == q.Protocol &&
				slices.Equal(p.Ports, q.Ports) && slices.Equal(p.Sources, q.Sources) && slices.Equal(p.Destinations, q.Destinations) &&
				slices.Equal(p.SourcePorts, q.SourcePorts) && slices.Equal(p.SourceASGs, q.SourceASGs) &&
				slices.Equal(p.DestinationASGs, q.DestinationASGs)
		})
	}
	return a.Missing == b.Missing && same(a.Deny, b.Deny) && same(a.Ahead, b.Ahead)
}

// giveUp marks a grant failed whose open never happened in one NSG, and
// makes sure no rule is left.
func (s *Reconciler) giveUp(ctx context.Context, reqID string, i int, nsg string) error {
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
	idx = strings.TrimSuffix(idx, "-"+familyV6)
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 || strconv.Itoa(i) != idx {
		return "", 0, false
	}
	return id, i, true
}

// drift audits a difference found between the NSGs and the store, and
// notifies. Its id is unique per finding, so a repeated event audits twice
// only when the drift happened twice.
func (s *Reconciler) drift(ctx context.Context, r Request, vm, nsg, detail string) {
	s.cfg.Log.Warn().Str("nsg", nsg).Str("vm", vm).Str("request", r.ID).Msg(detail)
	_ = s.audit(ctx, AuditEvent{Action: AuditDrift, Actor: System.ID, Policy: r.Policy, Request: r.ID, VM: vm, NSG: nsg,
		Result: ResultSuccess, Detail: clip(detail, 500), Notice: s.eventNotice(EventDrift, r.Policy, r.ID, System.ID, vm, detail)})
}

// stillOpen reports whether grant i of r is live and its rule in nsgID is
// recorded open.
func stillOpen(r Request, i int, nsgID string, now time.Time) bool {
	if r.Status != RequestActive || i >= len(r.Grants) || r.Grants[i].Ended(now) {
		return false
	}
	gn, _ := r.Grants[i].NSG(nsgID)
	return gn != nil && gn.State == RuleOpen
}

// rulesIntact reports whether every allow rule of grant i of r is in
// present (the NSG's rules by lower-case name) as the service writes it.
func (s *Reconciler) rulesIntact(present map[string]SecurityRule, r Request, i int) bool {
	for _, rule := range s.allowRules(r, i) {
		if have, ok := present[strings.ToLower(rule.Name)]; !ok || !s.sameRule(have, rule) {
			return false
		}
	}
	return true
}
