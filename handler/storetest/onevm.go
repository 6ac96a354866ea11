package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"jitaccess/handler/jit"
)

// policyOn returns a policy on the given VMs, each with one port.
func policyOn(name string, vms ...string) jit.Policy {
	p := jit.Policy{Name: name, CreatedAt: base, UpdatedAt: base}
	for _, vm := range vms {
		p.VMs = append(p.VMs, jit.VMPolicy{ID: vm, Name: vm[strings.LastIndexByte(vm, '/')+1:],
			Ports: []jit.PortRule{{Number: 22, Protocol: jit.ProtocolTCP, AllowedSources: []string{"*"}, MaxDuration: jit.DefaultMaxRequest}}})
	}
	return p
}

// ownedBy returns fullPolicy(name) on VMs of its own: fullPolicy's VM ids
// with tag appended, so that several such policies can be stored.
func ownedBy(name, tag string) jit.Policy {
	p := fullPolicy(name)
	for i := range p.VMs {
		p.VMs[i].ID += "-" + tag
	}
	return p
}

// assertVMTaken checks err is the conflict of a VM already in another
// policy, naming both.
func assertVMTaken(t *testing.T, what string, err error, vm, other string) {
	t.Helper()
	assertCode(t, what, err, jit.ECONFLICT)
	msg := strings.ToLower(jit.ErrorMessage(err))
	if !strings.Contains(msg, strings.ToLower(vm)) || !strings.Contains(msg, strings.ToLower(other)) {
		t.Errorf("%s: message %q does not name VM %s and policy %s", what, jit.ErrorMessage(err), vm, other)
	}
}

func testPolicyOneVM(t *testing.T, s jit.Store) {
	ctx := context.Background()
	p1, err := s.CreatePolicy(ctx, policyOn("p1", vmA, vmB))
	if err != nil {
		t.Fatalf("CreatePolicy(p1): %v", err)
	}

	_, err = s.CreatePolicy(ctx, policyOn("p2", vmC, strings.ToUpper(vmB)))
	assertVMTaken(t, "CreatePolicy naming p1's VM in upper case", err, vmB, "p1")
	if _, err := s.GetPolicy(ctx, "p2"); jit.ErrorCode(err) != jit.ENOTFOUND {
		t.Errorf("a refused CreatePolicy stored the policy: %v", err)
	}

	p2, err := s.CreatePolicy(ctx, policyOn("p2", vmC))
	if err != nil {
		t.Fatalf("CreatePolicy(p2) on a free VM: %v", err)
	}
	grab := policyOn("p2", vmC, strings.ToLower(vmA))
	grab.ETag = p2.ETag
	_, err = s.UpdatePolicy(ctx, grab)
	assertVMTaken(t, "UpdatePolicy adding p1's VM in lower case", err, vmA, "p1")
	grab.ETag = ""
	_, err = s.UpdatePolicy(ctx, grab)
	assertVMTaken(t, "UpdatePolicy without ETag adding p1's VM", err, vmA, "p1")
	if got, err := s.GetPolicy(ctx, "p2"); err != nil || got.ETag != p2.ETag || len(got.VMs) != 1 {
		t.Errorf("a refused UpdatePolicy changed the policy: %d VMs, ETag %q (was %q), %v", len(got.VMs), got.ETag, p2.ETag, err)
	}

	// A policy rewritten with its own VMs does not conflict with itself.
	p1.UpdatedBy = "bob"
	if p1, err = s.UpdatePolicy(ctx, p1); err != nil {
		t.Fatalf("UpdatePolicy(p1) with its own VMs: %v", err)
	}
	// A VM moves: out of p1 first, then into p2.
	p1.VMs = p1.VMs[1:]
	if _, err := s.UpdatePolicy(ctx, p1); err != nil {
		t.Fatalf("UpdatePolicy(p1) dropping VM-A: %v", err)
	}
	grab.ETag = p2.ETag
	if _, err := s.UpdatePolicy(ctx, grab); err != nil {
		t.Fatalf("UpdatePolicy(p2) taking the freed VM-A: %v", err)
	}
	// A deleted policy frees its VMs.
	if err := s.DeletePolicy(ctx, "p1", ""); err != nil {
		t.Fatalf("DeletePolicy(p1): %v", err)
	}
	if _, err := s.CreatePolicy(ctx, policyOn("p3", vmB)); err != nil {
		t.Errorf("CreatePolicy on the VM of a deleted policy: %v", err)
	}
	if ps, err := s.ListPolicies(ctx); err != nil || len(ps) != 2 {
		t.Errorf("ListPolicies = %d policies, %v; want p2 and p3", len(ps), err)
	}
}

// testPolicyDeletingHoldsVMs: a policy being deleted still has deny rules
// on its VMs, so its VMs stay taken until it is gone.
func testPolicyDeletingHoldsVMs(t *testing.T, s jit.Store) {
	ctx := context.Background()
	p := policyOn("going", vmA)
	p.State = jit.PolicyDeleting
	created, err := s.CreatePolicy(ctx, p)
	if err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}
	got, err := s.GetPolicy(ctx, "going")
	if err != nil || got.State != jit.PolicyDeleting {
		t.Fatalf("GetPolicy = State %q, %v; want %q", got.State, err, jit.PolicyDeleting)
	}
	_, err = s.CreatePolicy(ctx, policyOn("next", vmA))
	assertVMTaken(t, "CreatePolicy on a VM of a policy being deleted", err, vmA, "going")
	if err := s.DeletePolicy(ctx, "going", created.ETag); err != nil {
		t.Fatalf("DeletePolicy: %v", err)
	}
	if _, err := s.CreatePolicy(ctx, policyOn("next", vmA)); err != nil {
		t.Errorf("CreatePolicy once the deleting policy is gone: %v", err)
	}
}

// race runs n calls at once and returns how many succeeded; every other
// one must fail with ECONFLICT.
func race(t *testing.T, n int, call func(i int) error) int {
	t.Helper()
	var mu sync.Mutex
	wins := 0
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			err := call(i)
			if err != nil && jit.ErrorCode(err) != jit.ECONFLICT {
				t.Errorf("call %d: %v, want success or a conflict", i, err)
			}
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	return wins
}

const racers = 8

// testPolicyRaceOneVM: policies of different names that all name one VM,
// created at once: one is stored, whatever the interleaving.
func testPolicyRaceOneVM(t *testing.T, s jit.Store) {
	ctx := context.Background()
	wins := race(t, racers, func(i int) error {
		vm := vmA
		if i%2 == 1 {
			vm = strings.ToUpper(vmA)
		}
		_, err := s.CreatePolicy(ctx, policyOn(fmt.Sprintf("race-%d", i), fmt.Sprintf("%s-own-%d", vmC, i), vm))
		return err
	})
	ps, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	if wins != 1 || len(ps) != 1 {
		t.Fatalf("%d concurrent creates naming one VM: %d succeeded, %d stored; want 1 and 1", racers, wins, len(ps))
	}

	// The same through updates: every policy exists, each tries to add vmB.
	for i := range racers {
		if _, err := s.CreatePolicy(ctx, policyOn(fmt.Sprintf("upd-%d", i), fmt.Sprintf("%s-upd-%d", vmC, i))); err != nil {
			t.Fatalf("CreatePolicy: %v", err)
		}
	}
	wins = race(t, racers, func(i int) error {
		name := fmt.Sprintf("upd-%d", i)
		_, err := s.UpdatePolicy(ctx, policyOn(name, fmt.Sprintf("%s-upd-%d", vmC, i), vmB))
		return err
	})
	ps, err = s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	holders := 0
	for _, p := range ps {
		if _, ok := p.VM(vmB); ok {
			holders++
		}
	}
	if wins != 1 || holders != 1 {
		t.Errorf("%d concurrent updates adding one VM: %d succeeded, %d policies hold it; want 1 and 1", racers, wins, holders)
	}
}

// testPolicyRaceSameName: one name created at once by many, each on VMs of
// its own: one is stored, and it is whole.
func testPolicyRaceSameName(t *testing.T, s jit.Store) {
	ctx := context.Background()
	wins := race(t, racers, func(i int) error {
		name := "same"
		if i%2 == 1 {
			name = "SAME"
		}
		_, err := s.CreatePolicy(ctx, policyOn(name, fmt.Sprintf("%s-%d", vmC, i)))
		return err
	})
	ps, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	if wins != 1 || len(ps) != 1 {
		t.Fatalf("%d concurrent creates of one name: %d succeeded, %d stored; want 1 and 1", racers, wins, len(ps))
	}
	if len(ps[0].VMs) != 1 || !strings.HasPrefix(ps[0].VMs[0].ID, vmC+"-") {
		t.Errorf("stored policy has VMs %+v, want one racer's", ps[0].VMs)
	}
}

// testPolicyRaceUnrelated: policies on VMs of their own, created at once,
// are all stored: racing writers retry rather than refuse.
func testPolicyRaceUnrelated(t *testing.T, s jit.Store) {
	ctx := context.Background()
	wins := race(t, racers, func(i int) error {
		_, err := s.CreatePolicy(ctx, policyOn(fmt.Sprintf("own-%d", i), fmt.Sprintf("%s-%d", vmC, i)))
		return err
	})
	ps, err := s.ListPolicies(ctx)
	if err != nil {
		t.Fatalf("ListPolicies: %v", err)
	}
	if wins != racers || len(ps) != racers {
		t.Errorf("%d concurrent creates of unrelated policies: %d succeeded, %d stored; want all", racers, wins, len(ps))
	}
}
