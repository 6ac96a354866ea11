package httpapi_test

import (
	"strings"
	"testing"
	"time"
)

// TestBatchedOpensAndClosesOnASharedNSG has many grants on one subnet NSG
// opened and closed by the batching worker: while one slow NSG write runs,
// the NSG's other operations queue up and go in the next write together.
func TestBatchedOpensAndClosesOnASharedNSG(t *testing.T) {
	const grants = 12
	s := newStack(t, stackOptions{local: true})
	for _, vm := range []string{"vm-subnet-nsg", "vm-both-nsg"} {
		s.must(200, nil, "PUT", "/api/v1/policies/"+vm, policyBody(vm, nil), nil)
	}
	s.sim.ResetCalls()
	s.sim.SetLatency(0, 200*time.Millisecond)
	ids := make([]string, grants)
	for i := range ids {
		vm := []string{"vm-subnet-nsg", "vm-both-nsg"}[i%2]
		var r request
		s.must(202, nil, "POST", "/api/v1/policies/"+vm+"/initiate", initiate(vm, "PT1H"), &r)
		ids[i] = r.ID
	}
	waitAll := func(what, status string) {
		t.Helper()
		waitFor(t, what, func() bool {
			for _, id := range ids {
				var r request
				s.must(200, nil, "GET", "/api/v1/requests/"+id, nil, &r)
				if r.Grants[0].Status != status {
					return false
				}
			}
			return true
		})
	}
	waitAll("every grant open", "Initiated")
	for _, id := range ids {
		var r request
		s.must(200, nil, "GET", "/api/v1/requests/"+id, nil, &r)
		if _, ok := s.rule("nsg-subnet-protected", r.Grants[0].RuleName); !ok {
			t.Errorf("rule %s missing from the shared NSG", r.Grants[0].RuleName)
		}
	}
	// 12 grants on the shared NSG, 6 on nsg-vm-both: one write each
	// would be 18.
	c := s.sim.Calls()
	t.Logf("opens: %v", c.ByKind)
	if writes := c.ByKind["PUT securityRules"] + c.ByKind["PUT networkSecurityGroups"]; writes >= 2*grants-grants/2 || c.ByKind["PUT networkSecurityGroups"] == 0 {
		t.Errorf("opening %d grants took calls %v: want batched NSG writes", grants, c.ByKind)
	}

	s.sim.ResetCalls()
	for _, id := range ids {
		s.must(200, nil, "POST", "/api/v1/requests/"+id+"/revoke", nil, nil)
	}
	waitAll("every grant revoked", "Revoked")
	waitFor(t, "every rule gone", func() bool {
		for _, nsg := range []string{"nsg-subnet-protected", "nsg-vm-both"} {
			for _, n := range s.sim.RuleNames(nsgID(nsg)) {
				if strings.HasPrefix(n, "jit-allow-") {
					return false
				}
			}
		}
		return true
	})
	waitFor(t, "a close audit event per grant and NSG", func() bool { return len(s.auditDetails("close")) == grants+grants/2 })
	c = s.sim.Calls()
	t.Logf("closes: %v", c.ByKind)
	if writes := c.ByKind["DELETE securityRules"] + c.ByKind["PUT networkSecurityGroups"]; writes >= 2*grants-grants/2 || c.ByKind["PUT networkSecurityGroups"] == 0 {
		t.Errorf("closing %d grants took calls %v: want batched NSG writes", grants, c.ByKind)
	}
	if n := len(s.auditDetails("open")); n != grants+grants/2 {
		t.Errorf("%d open audit events, want %d", n, grants+grants/2)
	}
}
