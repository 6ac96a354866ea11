package storetest

import (
	"context"
	_ "embed"
	"strings"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// PolicyBeforeState is the JSON of a policy as the version before
// Policy.State wrote it (ETag left empty), VMPolicy.Warnings included:
// stores keep records of that version, which must still read. It was made
// by that version's jit package, not by hand.
//
//go:embed testdata/policy-before-state.json
var PolicyBeforeState []byte

// CheckPolicyBeforeState checks that s reads the policy of
// PolicyBeforeState, which the caller stored in s's own format with the
// given ETag ("" when the store supplies its own), and that the policy
// still takes part in every rule: it can be updated, and its VM is taken.
func CheckPolicyBeforeState(t *testing.T, s jit.Store, etag string) {
	t.Helper()
	ctx := context.Background()
	vm := "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-Old/providers/Microsoft.Compute/virtualMachines/old-vm"
	at := time.Date(2025, 5, 6, 7, 8, 9, 123456000, time.UTC)
	want := jit.Policy{
		Name: "Legacy",
		VMs: []jit.VMPolicy{{
			ID:         vm,
			Ports:      []jit.PortRule{{Number: 22, Protocol: jit.ProtocolTCP, AllowedSources: []string{"*"}, MaxDuration: 3 * time.Hour}},
			Name:       "old-vm",
			PrivateIPs: []string{"10.1.0.4"},
			NSGs:       []jit.NSGRef{{ID: "/subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/RG-Old/providers/Microsoft.Network/networkSecurityGroups/old-nsg", Scope: "nic"}},
		}},
		Requesters: []string{"11111111-2222-3333-4444-555555555555"},
		CreatedAt:  at,
		UpdatedAt:  at.Add(time.Hour),
		UpdatedBy:  "alice@example.com",
	}
	got, err := s.GetPolicy(ctx, "legacy")
	if err != nil {
		t.Fatalf("GetPolicy of a record written before Policy.State: %v", err)
	}
	if got.ETag == "" || etag != "" && got.ETag != etag {
		t.Errorf("old record's ETag = %q, want %q", got.ETag, etag)
	}
	want.ETag = got.ETag
	assertEqual(t, "policy written before Policy.State", got, want)
	ps, err := s.ListPolicies(ctx)
	if err != nil || len(ps) != 1 {
		t.Fatalf("ListPolicies = %d policies, %v; want the old one", len(ps), err)
	}
	assertEqual(t, "listed policy written before Policy.State", ps[0], want)

	_, err = s.CreatePolicy(ctx, policyOn("new", strings.ToUpper(vm)))
	assertVMTaken(t, "CreatePolicy on the VM of an old record", err, vm, "Legacy")

	got.UpdatedBy = "bob"
	updated, err := s.UpdatePolicy(ctx, got)
	if err != nil {
		t.Fatalf("UpdatePolicy of an old record with the ETag read: %v", err)
	}
	if _, err := s.UpdatePolicy(ctx, got); jit.ErrorCode(err) != jit.ECONFLICT {
		t.Errorf("UpdatePolicy with the old record's ETag after an update: %v, want a conflict", err)
	}
	if err := s.DeletePolicy(ctx, "legacy", updated.ETag); err != nil {
		t.Errorf("DeletePolicy: %v", err)
	}
}
