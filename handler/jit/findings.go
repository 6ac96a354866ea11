package jit

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Warning is a finding about a protected VM: a foreign rule that lets a
// policy port in ahead of the deny rule makes JIT ineffective for it.
type Warning struct {
	NSG  string
	Rule string
	Text string
}

// findBypasses returns the warnings for one VM in one NSG.
func findBypasses(vm VMPolicy, n NSGInfo) []Warning {
	deny := -1
	for _, r := range n.Rules {
		if strings.EqualFold(r.Name, DenyRuleName(vm.ID)) {
			deny = r.Priority
		}
	}
	if deny < 0 {
		return nil // no deny rule yet: the repair comes first
	}
	var out []Warning
	for _, r := range n.Rules {
		if strings.HasPrefix(strings.ToLower(r.Name), RulePrefix) || !strings.EqualFold(r.Access, AccessAllow) || r.Priority >= deny {
			continue
		}
		if !coversAny(r.Destinations, vm.PrivateIPs) {
			continue
		}
		var ports []string
		for _, p := range vm.PortNumbers() {
			if portIn(p, r.Ports) {
				ports = append(ports, strconv.Itoa(p))
			}
		}
		if len(ports) == 0 {
			continue
		}
		out = append(out, Warning{NSG: n.ID, Rule: r.Name, Text: fmt.Sprintf(
			"rule %s (priority %d) in NSG %s lets port %s in ahead of the JIT deny rule (priority %d): JIT is ineffective for it",
			r.Name, r.Priority, ResourceName(n.ID), strings.Join(ports, ", "), deny)})
	}
	return out
}

func portIn(p int, ranges []string) bool {
	for _, r := range ranges {
		if r == "*" {
			return true
		}
		lo, hi, isRange := strings.Cut(r, "-")
		a, err := strconv.Atoi(strings.TrimSpace(lo))
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
				continue
			}
		}
		if p >= a && p <= b {
			return true
		}
	}
	return false
}

// coversAny reports whether a rule's destinations include one of the IPs;
// service tags such as VirtualNetwork are taken to cover them.
func coversAny(dests, ips []string) bool {
	for _, d := range dests {
		if d == "*" || !strings.ContainsAny(d, ".:") {
			return true // any, or a service tag
		}
		p, err := toPrefix(d)
		if err != nil {
			continue
		}
		for _, ip := range ips {
			if a, err := netip.ParseAddr(ip); err == nil && p.Contains(a) {
				return true
			}
		}
	}
	return false
}

// recordFindings is being replaced by NSG states.
func (s *Service) recordFindings(ctx context.Context, v *view, nsgs []NSGInfo) error { return nil }
