package jit

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// bypasses returns, in words, the foreign rules of an NSG (as last seen)
// that let one of the VM's policy ports in ahead of the JIT deny rule that
// closes it, whatever their names: rules aimed at the VM's addresses, at
// wider prefixes, at service tags or at application security groups
// (which may hold the VM).
func bypasses(vm VMPolicy, st NSGState) []string {
	var out []string
	seen := map[string]bool{}
	for _, pr := range vm.Ports {
		for _, ip := range vm.PrivateIPs {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				continue
			}
			deny := -1
			for _, r := range st.Deny {
				if denies(r, pr, a) && (deny < 0 || r.Priority < deny) {
					deny = r.Priority
				}
			}
			if deny < 0 {
				continue // not locked here: the state says so first
			}
			for _, r := range st.Ahead {
				if seen[r.Name] || r.Priority >= deny || !strings.EqualFold(r.Access, AccessAllow) || !portIn(pr.Number, r.Ports) {
					continue
				}
				if !(r.Protocol == "*" || pr.Protocol == ProtocolAny || strings.EqualFold(r.Protocol, pr.Protocol)) {
					continue
				}
				aimed := len(r.DestinationASGs) > 0 || coversAny(r.Destinations, []string{ip})
				if !aimed {
					continue
				}
				seen[r.Name] = true
				target := "it"
				if len(r.DestinationASGs) > 0 {
					target = "an application security group that may hold it"
				}
				out = append(out, fmt.Sprintf(
					"rule %s (priority %d) in NSG %s lets %s port %d into %s ahead of the JIT deny rule (priority %d): JIT is ineffective for it",
					r.Name, r.Priority, ResourceName(st.ID), pr.Protocol, pr.Number, target, deny))
			}
		}
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
