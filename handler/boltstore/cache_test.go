package boltstore_test

import (
	"path/filepath"
	"testing"

	"jitaccess/handler/boltstore"
	"jitaccess/handler/jit"
)

// The decoded-policy cache hands out copies: changing what GetPolicy
// returned changes neither the cache nor the next read, and an update is
// seen at once.
func TestPolicyCacheHandsOutCopies(t *testing.T) {
	db, err := boltstore.Open(filepath.Join(t.TempDir(), "jit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := boltstore.New(db.Bolt())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	vm := "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v"
	p, err := s.CreatePolicy(ctx, jit.Policy{Name: "p", VMs: []jit.VMPolicy{{ID: vm, PrivateIPs: []string{"10.0.0.4"},
		Ports: []jit.PortRule{{Number: 22, AllowedSources: []string{"*"}, Approval: &jit.Approval{Required: true, Approvers: []string{"a"}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		got, err := s.GetPolicy(ctx, "p")
		if err != nil {
			t.Fatal(err)
		}
		if got.VMs[0].PrivateIPs[0] != "10.0.0.4" || got.VMs[0].Ports[0].Approval.Approvers[0] != "a" {
			t.Fatalf("read back %+v", got.VMs[0])
		}
		got.VMs[0].PrivateIPs[0] = "changed"
		got.VMs[0].Ports[0].Approval.Approvers[0] = "changed"
		got.VMs = append(got.VMs, jit.VMPolicy{ID: "x"})
	}
	p.VMs[0].PrivateIPs = []string{"10.0.0.9"}
	if _, err := s.UpdatePolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	all, err := s.ListPolicies(ctx)
	if err != nil || len(all) != 1 || all[0].VMs[0].PrivateIPs[0] != "10.0.0.9" {
		t.Fatalf("after update: %+v, %v", all, err)
	}
}
