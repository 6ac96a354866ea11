package azurenet_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"jitaccess/handler/armsim"
	"jitaccess/handler/jit"
)

// The lean NSG path against ARM as Azure runs it: writes that take a
// second, one operation at a time per NSG and a small write budget. Two
// batched writes to one NSG at once and one to another NSG all land: the
// one refused while the other ran waits as ARM asks and writes again on
// what it reads then.
func TestApplyRulesAtAzureSpeed(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{Azure: &armsim.Azure{WriteTime: time.Second, Writes: armsim.Bucket{Size: 2, PerSecond: 2}}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, w := range []struct {
		nsg  string
		rule jit.SecurityRule
	}{{nsgVMNIC, allowRule("jit-allow-a", "203.0.113.7")}, {nsgVMNIC, allowRule("jit-allow-b", "203.0.113.8")}, {nsgProtected, allowRule("jit-allow-c", "203.0.113.9")}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = d.ApplyRules(ctx, w.nsg, put(w.rule))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("write %d: %v", i, err)
		}
	}
	names := func(nsg string) []string {
		rules, err := d.ListRules(ctx, nsg)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rules {
			out = append(out, r.Name)
		}
		return out
	}
	if got := names(nsgVMNIC); !slices.Contains(got, "jit-allow-a") || !slices.Contains(got, "jit-allow-b") {
		t.Errorf("rules on the shared NSG: %v, want both writes' rules", got)
	}
	if got := names(nsgProtected); !slices.Contains(got, "jit-allow-c") {
		t.Errorf("rules on the other NSG: %v", got)
	}
	c := sim.Calls()
	if c.Throttled == 0 {
		t.Errorf("three writes on a budget of two: none throttled (busy %d)", c.Busy)
	}
	if c.Operations != 3 {
		t.Errorf("%d writes accepted, want 3 (one per batch)", c.Operations)
	}
	t.Logf("writes %d, busy %d, throttled %d, polls %d", c.Writes, c.Busy, c.Throttled, c.Polls)
}

// A batched write to an NSG whose operation is still running is refused
// with RetryableErrorDueToAnotherOperation; the driver waits as the answer
// asks and lands the write after the running one.
func TestApplyRulesWaitsOutAnotherOperation(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{Azure: &armsim.Azure{WriteTime: 1500 * time.Millisecond}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	first := make(chan error, 1)
	go func() {
		_, err := d.ApplyRules(ctx, nsgVMNIC, put(allowRule("jit-allow-a", "203.0.113.7")))
		first <- err
	}()
	for sim.Calls().ByKind["PUT networkSecurityGroups"] == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := d.ApplyRules(ctx, nsgVMNIC, put(allowRule("jit-allow-b", "203.0.113.8"))); err != nil {
		t.Fatalf("write during another operation: %v", err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if c := sim.Calls(); c.Busy == 0 {
		t.Errorf("the second write was never refused as busy: %+v", c.ByKind)
	}
	rules, err := d.ListRules(ctx, nsgVMNIC)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rules {
		names = append(names, r.Name)
	}
	if !slices.Contains(names, "jit-allow-a") || !slices.Contains(names, "jit-allow-b") {
		t.Errorf("rules %v, want both writes'", names)
	}
}
