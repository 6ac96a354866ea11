package httpapi_test

import (
	"slices"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// TestVMStatisticsCountOnlyOpenedGrants: denied and pending requests never
// reached the VM, so they are not approved requests and their requestor is
// not its last user. Before the fix three denied requests made mallory the
// last user of a VM she never reached.
func TestVMStatisticsCountOnlyOpenedGrants(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	alice := easyAuth("alice", []string{jit.RoleRequester})
	mallory := easyAuth("mallory", []string{jit.RoleRequester})
	bob := easyAuth("bob", []string{jit.RoleApprover})
	s.must(200, admin, "PUT", "/api/v1/policies/gated", policyBody("vm-nic-nsg", map[string]any{
		"approval": map[string]any{"required": true, "approvers": []string{"bob"}}}), nil)
	nic := nsgID("nsg-vm-nic")

	var r request
	s.must(202, alice, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
	time.Sleep(50 * time.Millisecond) // the open time must differ from the request's start
	approvedAt := time.Now()
	s.must(200, bob, "POST", "/api/v1/requests/"+r.ID+"/approve", nil, &r)
	waitFor(t, "alice's rule open", func() bool { return slices.Contains(s.sim.RuleNames(nic), r.Grants[0].RuleName) })

	for i := range 3 {
		var m request
		s.must(202, mallory, "POST", "/api/v1/policies/gated/initiate", initiate("vm-nic-nsg", "PT1H"), &m)
		if i < 2 {
			s.must(200, bob, "POST", "/api/v1/requests/"+m.ID+"/deny", nil, nil)
		} // the third stays pending
	}

	type vmStats struct {
		Name             string     `json:"name"`
		ApprovedRequests int        `json:"approvedRequestsLast7Days"`
		LastUser         string     `json:"lastUser"`
		LastAccess       *time.Time `json:"lastAccessTimeUtc"`
	}
	var out struct{ Value []vmStats }
	s.must(200, admin, "GET", "/api/v1/vms", nil, &out)
	i := slices.IndexFunc(out.Value, func(v vmStats) bool { return v.Name == "vm-nic-nsg" })
	if i < 0 {
		t.Fatal("vm-nic-nsg not listed")
	}
	v := out.Value[i]
	if v.ApprovedRequests != 1 || v.LastUser != "alice" {
		t.Errorf("approvedRequestsLast7Days %d, lastUser %q; want 1, alice", v.ApprovedRequests, v.LastUser)
	}
	if v.LastAccess == nil || v.LastAccess.Before(approvedAt) {
		t.Errorf("lastAccessTimeUtc %v, want the open time, after the approval at %v", v.LastAccess, approvedAt)
	}
}
