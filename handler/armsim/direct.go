package armsim

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"
)

// AddRule creates or replaces a security rule directly, without HTTP, calls
// or faults, with ARM's validation. Tests use it to play another writer (a
// person in the portal, a pipeline) that changes an NSG behind the service's
// back.
func (s *Server) AddRule(nsgID string, rule armnetwork.SecurityRule) error {
	rt, aerr := parseRoute(nsgID)
	if aerr != nil || rt.typ != "networksecuritygroups" || rt.name == "" || rt.child != "" {
		return fmt.Errorf("armsim: %q is not an NSG id", nsgID)
	}
	name := deref(rule.Name)
	s.mu.Lock()
	nsg, k, aerr := s.nsgFor(rt)
	if aerr == nil {
		aerr = validateRule(name, rule.Properties)
	}
	if aerr != nil {
		s.mu.Unlock()
		return fmt.Errorf("armsim: add rule %s: %s: %s", name, aerr.Code, aerr.Message)
	}
	tag := s.newEtag()
	stored := storedRule(deref(nsg.ID), name, rule.Properties, tag)
	next := []*armnetwork.SecurityRule{}
	replaced := false
	for _, r := range nsg.Properties.SecurityRules {
		if strings.EqualFold(deref(r.Name), name) {
			r, replaced = stored, true
		}
		next = append(next, r)
	}
	if !replaced {
		next = append(next, stored)
	}
	if aerr := checkRuleSet(next); aerr != nil {
		s.mu.Unlock()
		return fmt.Errorf("armsim: add rule %s: %s: %s", name, aerr.Code, aerr.Message)
	}
	nsg.Properties.SecurityRules = next
	nsg.Etag = &tag
	s.markChangedLocked(kindNSG, k)
	s.mu.Unlock()
	s.changed(Change{ID: deref(stored.ID), Type: typeRule, Operation: "write", Etag: tag})
	return nil
}

// RuleJSON returns a security rule as GET would answer it, for byte-level
// comparisons in tests.
func (s *Server) RuleJSON(nsgID, name string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	nsg := s.st.nsgs[key(nsgID)]
	if nsg == nil {
		return nil, false
	}
	for _, r := range nsg.Properties.SecurityRules {
		if strings.EqualFold(deref(r.Name), name) {
			b, err := json.Marshal(r)
			return b, err == nil
		}
	}
	return nil, false
}

// RuleNames returns the names of an NSG's security rules in their order.
func (s *Server) RuleNames(nsgID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	nsg := s.st.nsgs[key(nsgID)]
	if nsg == nil {
		return nil
	}
	var names []string
	for _, r := range nsg.Properties.SecurityRules {
		names = append(names, deref(r.Name))
	}
	return names
}

// sortedValues returns a map's values ordered by key, for reproducible output.
func sortedValues[T any](m map[string]*T) []*T {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*T, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}
