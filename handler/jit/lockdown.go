package jit

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Band is an inclusive range of security rule priorities.
type Band struct{ Min, Max int }

// Size is how many priorities the band holds.
func (b Band) Size() int { return b.Max - b.Min + 1 }

// Default priority bands: allow rules ahead of deny rules, both ahead of
// Azure's default rules (65000 and up).
var (
	DefaultAllowBand = Band{1000, 1999}
	DefaultDenyBand  = Band{4000, 4095}
)

// MaxPrefixesPerNSG is ARM's limit on the address prefixes (and, apart, the
// ports) all rules of one NSG may name together.
const MaxPrefixesPerNSG = 4000

// Address families.
const (
	familyV4 = "v4"
	familyV6 = "v6"
)

// family returns the address family of an IP address or prefix, or "" when
// it is neither (a service tag, "*").
func family(s string) string {
	if p, err := toPrefix(s); err == nil {
		if p.Addr().Unmap().Is4() {
			return familyV4
		}
		return familyV6
	}
	return ""
}

// lockdownKey is what one deny rule covers: a family, a protocol and a
// port set.
type lockdownKey struct {
	family, protocol string
	ports            string // sorted, comma-separated
}

// lockdown is what the policies want of one NSG.
type lockdown struct {
	rules []SecurityRule
	// legacy are the lower-case names of per-VM deny rules written by
	// versions before aggregated deny rules, of VMs the policies name here
	// (being deleted or not): they go in the same write that puts the new
	// rules, so no port opens during the change.
	legacy map[string]bool
}

// lockdownOf computes the deny rules the policies want in NSG nsgID: one
// per address family, protocol and port set, covering the IPs of every VM
// behind the NSG whose policy is not being deleted.
func (s *Core) lockdownOf(pols []Policy, nsgID string) lockdown {
	ld := lockdown{legacy: map[string]bool{}}
	dests := map[lockdownKey][]string{}
	var keys []lockdownKey
	for _, p := range pols {
		for _, vm := range p.VMs {
			if !vm.guardedBy(nsgID) {
				continue
			}
			ld.legacy[strings.ToLower(LegacyDenyRuleName(vm.ID))] = true
			if p.State == PolicyDeleting {
				continue
			}
			for proto, ports := range vm.portsByProtocol() {
				for _, ip := range vm.PrivateIPs {
					k := lockdownKey{family: family(ip), protocol: proto, ports: ports}
					if k.family == "" {
						continue
					}
					if _, ok := dests[k]; !ok {
						keys = append(keys, k)
					}
					dests[k] = append(dests[k], ip)
				}
			}
		}
	}
	slices.SortFunc(keys, func(a, b lockdownKey) int {
		return strings.Compare(a.family+a.protocol+a.ports, b.family+b.protocol+b.ports)
	})
	for _, k := range keys {
		ips := slices.Clone(dests[k])
		slices.Sort(ips)
		ips = slices.Compact(ips)
		r := SecurityRule{
			Name:         s.denyRuleName(k),
			Description:  s.owner().describe(fmt.Sprintf("lockdown of %s %s (jitaccess; do not edit)", k.protocol, k.ports)),
			Access:       AccessDeny,
			Protocol:     armProtocol(k.protocol),
			SourcePorts:  []string{"*"},
			Ports:        strings.Split(k.ports, ","),
			Sources:      []string{AnySource},
			Destinations: ips,
		}
		ld.rules = append(ld.rules, r)
	}
	return ld
}

// prune says which rules the deployment may change that the lockdown no
// longer wants: its own deny rules not in ld, and legacy per-VM deny rules
// of VMs the policies name here.
func (ld lockdown) prune(o Owner) func(SecurityRule) bool {
	want := map[string]bool{}
	for _, r := range ld.rules {
		want[strings.ToLower(r.Name)] = true
	}
	return func(r SecurityRule) bool {
		name := strings.ToLower(r.Name)
		if !strings.HasPrefix(name, RulePrefix+"deny-") || want[name] {
			return false
		}
		if o.Owns(r) {
			return true
		}
		return o.Legacy(r) && ld.legacy[name]
	}
}

// denyRuleName names the deny rule of one family, protocol and port set:
// jit-deny-<protocol>-<family>-<digest of the deployment and port set>.
func (s *Core) denyRuleName(k lockdownKey) string {
	proto := strings.ToLower(k.protocol)
	if proto == ProtocolAny {
		proto = "any"
	}
	return RulePrefix + "deny-" + proto + "-" + k.family + "-" + ShortHash(s.cfg.Deployment+"|"+k.ports)
}

// LegacyDenyRuleName is the name versions before aggregated deny rules gave
// the deny rule of one VM in each NSG that guards it.
func LegacyDenyRuleName(vmID string) string {
	name := ResourceName(vmID)
	if len(name) > 40 {
		name = name[:40]
	}
	return RulePrefix + "deny-" + strings.ToLower(name) + "-" + ShortHash(vmID)
}

// guardedBy reports whether the NSG nsgID guards the VM.
func (v *VMPolicy) guardedBy(nsgID string) bool {
	for _, n := range v.NSGs {
		if SameID(n.ID, nsgID) {
			return true
		}
	}
	return false
}

// portsByProtocol groups the VM's policy ports by protocol, each set
// sorted and comma-separated: TCP 22 and UDP 53 are two deny rules, so
// that TCP 53 stays as it was.
func (v *VMPolicy) portsByProtocol() map[string]string {
	by := map[string][]int{}
	for _, r := range v.Ports {
		by[r.Protocol] = append(by[r.Protocol], r.Number)
	}
	out := make(map[string]string, len(by))
	for proto, ns := range by {
		out[proto] = strings.Join(portStrings(sortedCopy(ns)), ",")
	}
	return out
}

func (s *Core) owner() Owner { return Owner{Deployment: s.cfg.Deployment} }

// checkLimits refuses a set of policies whose lockdown would break an NSG
// limit: more deny rules than the deny band holds, or more prefixes than
// ARM allows in one NSG.
func (s *Core) checkLimits(pols []Policy, nsgs []string) error {
	for _, n := range nsgs {
		ld := s.lockdownOf(pols, n)
		if len(ld.rules) > s.cfg.DenyBand.Size() {
			return Errorf(EINVALID, "NSG %s would need %d JIT deny rules (one per address family, protocol and port set), more than the %d priorities of the deny band (%d–%d): give its VMs fewer distinct port sets",
				ResourceName(n), len(ld.rules), s.cfg.DenyBand.Size(), s.cfg.DenyBand.Min, s.cfg.DenyBand.Max)
		}
		prefixes := 0
		for _, r := range ld.rules {
			prefixes += len(r.Destinations)
		}
		if prefixes > MaxPrefixesPerNSG {
			return Errorf(EINVALID, "NSG %s would need %d VM addresses in its JIT deny rules, more than the %d address prefixes ARM allows in one NSG: protect fewer VMs behind it",
				ResourceName(n), prefixes, MaxPrefixesPerNSG)
		}
	}
	return nil
}

// nsgWrite is what one write to an NSG does besides its lockdown: the
// rules of grants to put and to remove.
type nsgWrite struct {
	put []SecurityRule
	del []string
}

// applyNSG makes one write to the NSG nsgID: w, and the deny rules the
// policies want there (the lockdown is level-triggered: every write to an
// NSG brings its deny rules in line). The policies are read after each
// read of the NSG (RuleChange.Refresh), so the lockdown is never planned
// from policies older than the NSG it is written to. What was seen, or why
// the write failed, is kept as the NSG's state; lockdown changes are
// audited per VM; deletions of policies waiting for this NSG are finished.
//
// When the change fails for a reason other than ARM being unavailable and
// it carried grants, the grants alone are tried once more, so that a
// lockdown that cannot be written (a limit hit) never blocks grants from
// closing; the lockdown's failure then stays recorded and is returned as
// lockErr while err is nil. A missing NSG is recorded as such.
func (s *Core) applyNSG(ctx context.Context, nsgID string, w nsgWrite) (ap Applied, lockErr, err error) {
	var pols []Policy
	var ld lockdown
	plan := func() (RuleChange, error) {
		var err error
		if pols, err = s.store.ListPolicies(ctx); err != nil {
			return RuleChange{}, fmt.Errorf("listing policies: %w", err)
		}
		ld = s.lockdownOf(pols, nsgID)
		c := RuleChange{Put: append(slices.Clone(ld.rules), w.put...), Delete: w.del, Prune: ld.prune(s.owner())}
		c.Ours = namesOf(c)
		return c, nil
	}
	// The change itself is planned after the NSG is read (Refresh): one
	// listing of the policies per read of the NSG.
	ap, err = s.net.ApplyRules(ctx, nsgID, RuleChange{Refresh: plan})
	switch {
	case err == nil:
		s.recordNSG(ctx, nsgID, ap, &ld, pols)
		return ap, nil, nil
	case ErrorCode(err) == ENOTFOUND:
		// The NSG is gone: nothing is open there, and no lockdown is due.
		s.recordNSG(ctx, nsgID, Applied{Missing: true}, &ld, pols)
		return Applied{Missing: true}, nil, nil
	}
	s.recordNSGFailure(ctx, nsgID, err)
	if ErrorCode(err) == EUNAVAILABLE || len(w.put)+len(w.del) == 0 {
		return ap, err, err
	}
	s.cfg.Log.Warn().Err(err).Str("nsg", nsgID).Msg("NSG change with its lockdown failed; trying the grants alone")
	grants := RuleChange{Put: w.put, Delete: w.del}
	grants.Ours = namesOf(grants)
	ap, gerr := s.net.ApplyRules(ctx, nsgID, grants)
	if gerr != nil {
		return ap, err, gerr
	}
	s.recordNSG(ctx, nsgID, ap, nil, pols)
	// The lockdown's failure is still the latest word on the NSG.
	s.recordNSGFailure(ctx, nsgID, err)
	return ap, err, nil
}

// namesOf vouches for the names c puts and deletes: the service only ever
// puts and deletes by the exact names it generates (see RuleChange.Ours).
func namesOf(c RuleChange) func(string) bool {
	names := make(map[string]bool, len(c.Put)+len(c.Delete))
	for _, r := range c.Put {
		names[strings.ToLower(r.Name)] = true
	}
	for _, n := range c.Delete {
		names[strings.ToLower(n)] = true
	}
	return func(name string) bool { return names[strings.ToLower(name)] }
}

// recordNSG keeps what ap shows of the NSG as its state, audits the VMs
// whose lockdown changed, and finishes deletions that waited for it. ld is
// nil when the write did not carry the lockdown.
func (s *Core) recordNSG(ctx context.Context, nsgID string, ap Applied, ld *lockdown, pols []Policy) {
	now := s.now()
	st := s.stateOf(nsgID, ap.Rules, ap.Missing, now)
	changedDeny := false
	for _, names := range [][]string{ap.Created, ap.Updated, ap.Removed} {
		for _, n := range names {
			if strings.HasPrefix(strings.ToLower(n), RulePrefix+"deny-") {
				changedDeny = true
			}
		}
	}
	// The state stored before is what the lockdown's audit compares with,
	// per VM. When it cannot be stored, the next sweep finds the same
	// change between the stored state and the NSG, and audits it.
	prev, err := s.store.PutNSGState(ctx, st)
	if err != nil {
		s.cfg.Log.Warn().Err(err).Str("nsg", nsgID).Msg("recording the NSG's state failed; the next sweep records and audits it")
	} else if changedDeny {
		s.auditLockdownChanges(ctx, pols, nsgID, prev, prev.Merge(st))
	}
	if ld != nil {
		s.finishDeletionsAt(ctx, pols, nsgID, st)
	}
}

// recordNSGFailure keeps why a change to the NSG failed, for the VM states.
func (s *Core) recordNSGFailure(ctx context.Context, nsgID string, cause error) {
	st := NSGState{ID: nsgID, Error: clip(ErrorMessage(cause)+": "+errorText(cause), 500), ErrorAt: s.now()}
	if _, err := s.store.PutNSGState(ctx, st); err != nil {
		s.cfg.Log.Warn().Err(err).Str("nsg", nsgID).Msg("recording the NSG's failure failed")
	}
}

// stateOf is what rules show of an NSG at now: the deployment's deny
// rules, and the foreign Allow rules ahead of the last of them.
func (s *Core) stateOf(nsgID string, rules []SecurityRule, missing bool, now time.Time) NSGState {
	st := NSGState{ID: nsgID, SeenAt: now, Missing: missing}
	o := s.owner()
	last := -1
	for _, r := range rules {
		if strings.EqualFold(r.Access, AccessDeny) && strings.HasPrefix(strings.ToLower(r.Name), RulePrefix+"deny-") && o.MayChange(r) {
			st.Deny = append(st.Deny, r)
			last = max(last, r.Priority)
		}
	}
	for _, r := range rules {
		if len(st.Ahead) < MaxAhead && !o.MayChange(r) && strings.EqualFold(r.Access, AccessAllow) && r.Priority < last {
			st.Ahead = append(st.Ahead, r)
		}
	}
	return st
}

// auditLockdownChanges audits, per VM of the policies behind the NSG, a
// lockdown that began or ended between two states of it.
func (s *Core) auditLockdownChanges(ctx context.Context, pols []Policy, nsgID string, prev, next NSGState) {
	type change struct {
		pol    string
		vm     VMPolicy
		locked bool
	}
	var changes []change
	for _, p := range pols {
		for _, vm := range p.VMs {
			if !vm.guardedBy(nsgID) {
				continue
			}
			was, is := lockedBy(vm, prev.Deny), lockedBy(vm, next.Deny)
			if was != is {
				changes = append(changes, change{p.Name, vm, is})
			}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, recordParallel)
	for _, c := range changes {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ev := AuditEvent{Action: AuditLockdown, Actor: System.ID, Policy: c.pol, VM: c.vm.ID, NSG: nsgID,
				Ports: c.vm.PortNumbers(), Sources: []string{AnySource}, Result: ResultSuccess,
				Detail: "the NSG's deny rules now close the policy's ports to this VM"}
			if !c.locked {
				ev.Action, ev.Sources, ev.Detail = AuditUnlock, nil, "the NSG's deny rules no longer close the policy's ports to this VM"
			}
			ev.ID = ev.Action + "-" + ShortHash(c.vm.ID) + "-" + ShortHash(nsgID) + "-" + next.SeenAt.Format("20060102T150405.000000000")
			_ = s.audit(ctx, ev)
		})
	}
	wg.Wait()
}

// finishDeletionsAt finishes the deletions of policies behind the NSG
// nsgID, whose state is now here.
func (s *Core) finishDeletionsAt(ctx context.Context, pols []Policy, nsgID string, here NSGState) {
	var waiting []Policy
	for _, p := range pols {
		if p.State != PolicyDeleting {
			continue
		}
		for _, vm := range p.VMs {
			if vm.guardedBy(nsgID) {
				waiting = append(waiting, p)
				break
			}
		}
	}
	if len(waiting) == 0 {
		return
	}
	states, err := s.store.ListNSGStates(ctx)
	if err != nil {
		return // the sweeper finishes it
	}
	byID := map[string]NSGState{}
	for _, st := range states {
		byID[strings.ToLower(st.ID)] = st
	}
	byID[strings.ToLower(nsgID)] = byID[strings.ToLower(nsgID)].Merge(here)
	s.finishDeletions(ctx, waiting, byID)
}

// finishDeletions deletes the policies being deleted whose every NSG has
// been seen, since the deletion was accepted, without deny rules for them.
func (s *Core) finishDeletions(ctx context.Context, waiting []Policy, states map[string]NSGState) {
	for _, p := range waiting {
		if !released(p, states) {
			continue
		}
		err := s.store.DeletePolicy(ctx, p.Name, p.ETag, s.stamp([]AuditEvent{{Action: AuditPolicyDelete, Actor: p.UpdatedBy,
			Policy: p.Name, Result: ResultSuccess, Detail: "deny rules removed from every NSG; the policy is gone"}})...)
		if err != nil {
			if ErrorCode(err) != ENOTFOUND && ErrorCode(err) != ECONFLICT {
				s.cfg.Log.Warn().Err(err).Str("policy", p.Name).Msg("finishing the policy's deletion failed; the sweeper retries")
			}
			continue
		}
		s.cfg.Log.Info().Str("policy", p.Name).Msg("policy deleted: its deny rules are gone")
	}
}

// released reports whether every NSG of p's VMs was seen, after the
// deletion was accepted, holding no deny rule for them.
func released(p Policy, states map[string]NSGState) bool {
	for _, vm := range p.VMs {
		for _, n := range vm.NSGs {
			st, ok := states[strings.ToLower(n.ID)]
			if !ok || st.SeenAt.Before(p.UpdatedAt) {
				return false
			}
			if !st.Missing && touchedBy(vm, st.Deny) {
				return false
			}
		}
	}
	return true
}

// lockedBy reports whether deny rules close every policy port of the VM to
// every one of its IPs.
func lockedBy(vm VMPolicy, deny []SecurityRule) bool {
	_, ok := firstGap(vm, deny)
	return ok && len(vm.PrivateIPs) > 0
}

// firstGap returns, when deny does not close every policy port of the VM
// to every IP of it, the first port and IP left open, in words.
func firstGap(vm VMPolicy, deny []SecurityRule) (string, bool) {
	for _, pr := range vm.Ports {
		for _, ip := range vm.PrivateIPs {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				continue
			}
			if !slices.ContainsFunc(deny, func(r SecurityRule) bool { return denies(r, pr, a) }) {
				return fmt.Sprintf("%s %d to %s", pr.Protocol, pr.Number, ip), false
			}
		}
	}
	return "", true
}

// touchedBy reports whether any deny rule names one of the VM's IPs.
func touchedBy(vm VMPolicy, deny []SecurityRule) bool {
	for _, r := range deny {
		for _, ip := range vm.PrivateIPs {
			if a, err := netip.ParseAddr(ip); err == nil && containsAddr(r.Destinations, a) {
				return true
			}
		}
	}
	return false
}

// denies reports whether the deny rule r closes port pr to address a from
// every source.
func denies(r SecurityRule, pr PortRule, a netip.Addr) bool {
	if !strings.EqualFold(r.Access, AccessDeny) || len(r.SourceASGs)+len(r.DestinationASGs) > 0 {
		return false
	}
	if !(r.Protocol == "*" || pr.Protocol != ProtocolAny && strings.EqualFold(r.Protocol, pr.Protocol)) {
		return false
	}
	if len(r.SourcePorts) > 0 && !slices.Contains(r.SourcePorts, "*") {
		return false
	}
	if !slices.Contains(r.Sources, AnySource) {
		return false
	}
	return portIn(pr.Number, r.Ports) && containsAddr(r.Destinations, a)
}

// containsAddr reports whether one of the prefixes holds a.
func containsAddr(prefixes []string, a netip.Addr) bool {
	for _, d := range prefixes {
		if d == "*" {
			return true
		}
		if p, err := toPrefix(d); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// OpSync asks the worker to bring one NSG's deny rules in line with the
// policies (and to finish deletions waiting for it).
const OpSync = "sync"

// syncOps are the operations that bring the NSGs in line after a policy
// change.
func syncOps(nsgs []string, now time.Time) []Operation {
	ops := make([]Operation, len(nsgs))
	for i, n := range nsgs {
		ops[i] = Operation{ID: OpSync + "-" + ShortHash(n) + "-" + strconv.FormatInt(now.UnixNano(), 36), Kind: OpSync, NSG: n}
	}
	return ops
}

// nsgsOf returns the NSGs of the policies' VMs, once each, in order.
func nsgsOf(pols ...Policy) []string {
	var out []string
	seen := map[string]bool{}
	for _, p := range pols {
		for _, vm := range p.VMs {
			for _, n := range vm.NSGs {
				if k := strings.ToLower(n.ID); !seen[k] {
					seen[k] = true
					out = append(out, n.ID)
				}
			}
		}
	}
	return out
}
