package httpapi_test

import (
	"slices"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// Scheduled closes are never cancelled: a close that comes before its
// grant's end (the grant was extended since) leaves the rule open, and one
// that comes after a revoke finds nothing to do.
func TestStaleClosesDoNothing(t *testing.T) {
	s := newStack(t, stackOptions{})
	admin := easyAuth("admin-0", []string{jit.RoleAdmin})
	nic := nsgID("nsg-vm-nic")
	s.must(200, admin, "PUT", "/api/v1/policies/p", policyBody("vm-nic-nsg", nil), nil)
	ctx := t.Context()
	hasRule := func(name string) bool { return slices.Contains(s.sim.RuleNames(nic), name) }

	var r request
	s.must(202, admin, "POST", "/api/v1/policies/p/initiate", initiate("vm-nic-nsg", "PT1H"), &r)
	var first jit.Request
	waitFor(t, "the rule to open and be recorded open", func() bool {
		var err error
		first, err = s.store.GetRequest(ctx, r.ID)
		return err == nil && hasRule(r.Grants[0].RuleName) && first.Grants[0].Status == jit.GrantInitiated
	})
	oldEnd := first.Grants[0].End
	s.must(200, admin, "POST", "/api/v1/requests/"+r.ID+"/extend", map[string]any{"duration": "PT2H"}, nil)
	// The close scheduled at the old end, delivered now as if that time
	// had come (or the clock of the queue ran ahead): the grant's end is an
	// hour later, so nothing closes.
	stale := jit.Operation{ID: jit.OperationID(jit.OpClose, r.ID, 0, nic, oldEnd), Kind: jit.OpClose, RequestID: r.ID, NSG: nic, Due: oldEnd}
	if err := s.worker.ApplyOperations(ctx, []jit.Operation{stale})[0]; err != nil {
		t.Fatalf("stale close: %v", err)
	}
	if !hasRule(r.Grants[0].RuleName) {
		t.Fatal("a close scheduled before the extension removed the extended grant's rule")
	}
	if got, _ := s.store.GetRequest(ctx, r.ID); got.Grants[0].Status != jit.GrantInitiated {
		t.Fatalf("after a stale close the grant is %s, want still open", got.Grants[0].Status)
	}

	s.must(200, admin, "POST", "/api/v1/requests/"+r.ID+"/revoke", nil, nil)
	waitFor(t, "the revoked rule to go", func() bool { return !hasRule(r.Grants[0].RuleName) })
	waitFor(t, "the close to be recorded", func() bool {
		got, _ := s.store.GetRequest(ctx, r.ID)
		return got.Grants[0].Done()
	})
	before, _ := s.store.GetRequest(ctx, r.ID)
	writes := s.sim.Calls().Writes
	late := jit.Operation{ID: jit.OperationID(jit.OpClose, r.ID, 0, nic, before.Grants[0].End), Kind: jit.OpClose, RequestID: r.ID, NSG: nic, Due: time.Now()}
	if err := s.worker.ApplyOperations(ctx, []jit.Operation{late})[0]; err != nil {
		t.Fatalf("close after revoke: %v", err)
	}
	after, _ := s.store.GetRequest(ctx, r.ID)
	if after.ETag != before.ETag {
		t.Error("a close after the revoke changed the request")
	}
	if w := s.sim.Calls().Writes; w != writes {
		t.Errorf("a close after the revoke wrote to ARM (%d writes, was %d)", w, writes)
	}
}
