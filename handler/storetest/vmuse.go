package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/jit"
)

// testVMUse: a VM's use counts each request once, keeps the newest access,
// is found under any case of the id, and only for VMs that have one.
func testVMUse(t *testing.T, s jit.Store) {
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	got, err := s.VMUses(ctx, []string{vmA, vmB})
	if err != nil || len(got) != 0 {
		t.Fatalf("VMUses on an empty store = %v, %v; want none", got, err)
	}
	for _, a := range []jit.VMAccess{
		{VM: vmA, Request: "r1", User: "alice", At: t0},
		{VM: strings.ToLower(vmA), Request: "r2", User: "bob", At: t0.Add(time.Hour).In(zone)},
		{VM: vmA, Request: "r1", User: "alice", At: t0.Add(2 * time.Hour)}, // r1 again: counted once
		{VM: vmA, Request: "r0", User: "carol", At: t0.Add(-time.Hour)},    // older: counted, not the last
		{VM: vmB, Request: "r3", User: "dave", At: t0.Add(-8 * 24 * time.Hour)},
	} {
		if err := s.RecordVMUse(ctx, a); err != nil {
			t.Fatalf("RecordVMUse(%+v): %v", a, err)
		}
	}
	got, err = s.VMUses(ctx, []string{strings.ToUpper(vmA), vmB, vmC})
	if err != nil {
		t.Fatalf("VMUses: %v", err)
	}
	a, ok := got[strings.ToLower(vmA)]
	if !ok || len(got) != 2 {
		t.Fatalf("VMUses = %v; want vmA and vmB by lower-case id", got)
	}
	if n := a.OpenedSince(t0.Add(2*time.Hour - jit.UseWindow)); n != 3 {
		t.Errorf("vmA opened by %d requests in the window, want 3 (r0, r1, r2; r1 once)", n)
	}
	if !a.LastAccess.Equal(t0.Add(time.Hour)) || a.LastUser != "bob" {
		t.Errorf("vmA last access %v by %q, want %v by bob", a.LastAccess, a.LastUser, t0.Add(time.Hour))
	}
	assertUTC(t, "VM use", a)
	if b := got[strings.ToLower(vmB)]; b.OpenedSince(t0.Add(-jit.UseWindow)) != 0 || b.LastUser != "dave" {
		t.Errorf("vmB: %d opens in the window, last user %q; want 0 (its one open is older), dave", b.OpenedSince(t0.Add(-jit.UseWindow)), b.LastUser)
	}
	if err := s.RecordVMUse(ctx, jit.VMAccess{VM: vmA}); jit.ErrorCode(err) != jit.EINVALID {
		t.Errorf("RecordVMUse without a request = %v, want EINVALID", err)
	}
}

// testVMUseConcurrent: accesses recorded at the same time are all counted.
func testVMUseConcurrent(t *testing.T, s jit.Store) {
	ctx := context.Background()
	t0 := time.Now().UTC()
	const n = 12
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a := jit.VMAccess{VM: vmC, Request: fmt.Sprintf("c%d", i), User: "u", At: t0.Add(time.Duration(i) * time.Millisecond)}
			if err := s.RecordVMUse(ctx, a); err != nil {
				t.Errorf("RecordVMUse(%s): %v", a.Request, err)
			}
		})
	}
	wg.Wait()
	got, err := s.VMUses(ctx, []string{vmC})
	if err != nil {
		t.Fatal(err)
	}
	if c := got[strings.ToLower(vmC)].OpenedSince(t0.Add(-time.Hour)); c != n {
		t.Errorf("%d concurrent accesses counted as %d: some were lost", n, c)
	}
}
