package azurenet_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v9"

	"jitaccess/handler/armsim"
	"jitaccess/handler/azurenet"
	"jitaccess/handler/jit"
)

func manyAllowRules(n int) []jit.SecurityRule {
	rules := make([]jit.SecurityRule, n)
	for i := range rules {
		rules[i] = allowRule(fmt.Sprintf("jit-allow-%03d", i), fmt.Sprintf("203.0.113.%d", i+1))
	}
	return rules
}

func TestApplyRulesOneWrite(t *testing.T) {
	sim, d := newEnv(t, armsim.Options{})
	ctx := context.Background()
	foreign, ok := sim.RuleJSON(nsgVMNIC, "allow-https")
	if !ok {
		t.Fatal("demo estate lacks allow-https")
	}
	// Two existing managed rules: one to change, one to delete.
	apply(t, d, nsgVMNIC, put(allowRule("jit-keep", "198.51.100.1"), allowRule("jit-gone", "198.51.100.2")))
	keepBefore, _ := findRule(t, d, nsgVMNIC, "jit-keep")
	sim.ResetCalls()

	rules := append(manyAllowRules(50), allowRule("jit-keep", "198.51.100.1", "198.51.100.9"), denyRule("jit-deny-vm"))
	a := apply(t, d, nsgVMNIC, jit.RuleChange{Put: rules, Delete: []string{"jit-gone", "jit-never-there"}})
	if len(a.Created) != 51 || !slices.Equal(a.Updated, []string{"jit-keep"}) || !slices.Equal(a.Removed, []string{"jit-gone"}) {
		t.Errorf("applied created %d %v, updated %v, removed %v", len(a.Created), a.Created, a.Updated, a.Removed)
	}
	// One read, one write: following the PUT's operation reads no NSG.
	if c := sim.Calls(); c.Writes != 1 || c.ByKind["PUT networkSecurityGroups"] != 1 || c.ByKind["GET networkSecurityGroups"] != 1 {
		t.Fatalf("calls %v, want one NSG read and one NSG write", c.ByKind)
	}
	listed, err := d.ListRules(ctx, nsgVMNIC)
	if err != nil {
		t.Fatal(err)
	}
	// Applied.Rules are what a read after the write sees.
	if !reflect.DeepEqual(a.Rules, listed) {
		t.Errorf("Applied.Rules differ from the rules read after the write:\n got %+v\nwant %+v", a.Rules, listed)
	}
	byName := map[string]jit.SecurityRule{}
	priorities := map[int]string{}
	for _, r := range listed {
		byName[r.Name] = r
		if other, dup := priorities[r.Priority]; dup {
			t.Errorf("%s and %s share priority %d", r.Name, other, r.Priority)
		}
		priorities[r.Priority] = r.Name
	}
	for _, r := range rules {
		got, ok := byName[r.Name]
		if !ok {
			t.Errorf("rule %s missing", r.Name)
			continue
		}
		band := azurenet.Band{Min: azurenet.DefaultAllowMin, Max: azurenet.DefaultAllowMax}
		if r.Access == jit.AccessDeny {
			band = azurenet.Band{Min: azurenet.DefaultDenyMin, Max: azurenet.DefaultDenyMax}
		}
		if got.Priority < band.Min || got.Priority > band.Max {
			t.Errorf("rule %s priority %d outside %v", r.Name, got.Priority, band)
		}
	}
	if got := byName["jit-keep"]; got.Priority != keepBefore.Priority || len(got.Sources) != 2 {
		t.Errorf("changed rule %+v: want its priority %d kept and two sources", got, keepBefore.Priority)
	}
	if _, ok := byName["jit-gone"]; ok {
		t.Error("jit-gone not deleted")
	}
	if after, _ := sim.RuleJSON(nsgVMNIC, "allow-https"); !bytes.Equal(foreign, after) {
		t.Errorf("foreign rule changed:\nbefore %s\nafter  %s", foreign, after)
	}

	// The same again changes nothing and writes nothing.
	sim.ResetCalls()
	again := apply(t, d, nsgVMNIC, jit.RuleChange{Put: rules, Delete: []string{"jit-gone"}})
	if c := sim.Calls(); c.Writes != 0 || c.Reads != 1 {
		t.Errorf("repeated ApplyRules made calls %v, want one read", c.ByKind)
	}
	if again.Wrote() || !reflect.DeepEqual(again.Rules, listed) {
		t.Errorf("repeated ApplyRules: %+v, want nothing written and the rules as read", again)
	}

	// Deleting everything managed leaves the foreign rule alone.
	var names []string
	for _, r := range rules {
		names = append(names, r.Name)
	}
	sim.ResetCalls()
	if a := apply(t, d, nsgVMNIC, del(names...)); len(a.Removed) != len(names) || len(a.Rules) != 1 {
		t.Errorf("delete all: removed %d, rules %+v", len(a.Removed), a.Rules)
	}
	if c := sim.Calls(); c.Writes != 1 {
		t.Errorf("%d writes to delete %d rules, want 1", c.Writes, len(names))
	}
	if names := sim.RuleNames(nsgVMNIC); !slices.Equal(names, []string{"allow-https"}) {
		t.Errorf("rules left: %v", names)
	}
	if after, _ := sim.RuleJSON(nsgVMNIC, "allow-https"); !bytes.Equal(foreign, after) {
		t.Errorf("foreign rule changed by the delete:\nbefore %s\nafter  %s", foreign, after)
	}
}

// TestApplyRulesKeepsWritableMembers: a PUT replaces the whole NSG, so the
// write must carry back what someone else set on it besides its rules.
func TestApplyRulesKeepsWritableMembers(t *testing.T) {
	ctx := context.Background()
	_, d, co := newEnvOptions(t, armsim.Options{})
	client, err := armnetwork.NewSecurityGroupsClient(armsim.DemoSubscription, &azfake.TokenCredential{}, co)
	if err != nil {
		t.Fatal(err)
	}
	got, err := client.Get(ctx, armsim.DemoResourceGroup, "nsg-vm-nic", nil)
	if err != nil {
		t.Fatal(err)
	}
	nsg := got.SecurityGroup
	nsg.Tags = map[string]*string{"owner": to.Ptr("network-team"), "cost-centre": to.Ptr("4711")}
	nsg.Properties.FlushConnection = to.Ptr(true)
	poller, err := client.BeginCreateOrUpdate(ctx, armsim.DemoResourceGroup, "nsg-vm-nic", nsg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := poller.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Millisecond}); err != nil {
		t.Fatal(err)
	}

	apply(t, d, nsgVMNIC, put(manyAllowRules(3)...))
	after, err := client.Get(ctx, armsim.DemoResourceGroup, "nsg-vm-nic", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(after.Properties.SecurityRules); n != 4 {
		t.Errorf("%d rules after the write, want the foreign one and 3", n)
	}
	if len(after.Tags) != 2 || deref(after.Tags["owner"]) != "network-team" || deref(after.Tags["cost-centre"]) != "4711" {
		t.Errorf("tags after the write: %v, want owner and cost-centre kept", after.Tags)
	}
	if !deref(after.Properties.FlushConnection) {
		t.Error("flushConnection lost by the write")
	}
	if deref(after.Location) != deref(nsg.Location) {
		t.Errorf("location %q, want %q", deref(after.Location), deref(nsg.Location))
	}
}

func deref[T any](p *T) T {
	var zero T
	if p != nil {
		return *p
	}
	return zero
}

func TestApplyRulesRetriesEtagConflict(t *testing.T) {
	var sim *armsim.Server
	var raced atomic.Bool
	// Another writer changes the NSG between the driver's read and its PUT,
	// taking the priority the driver picked.
	sim, d := newEnv(t, armsim.Options{Intercept: func(r *http.Request, c armsim.Call) *armsim.Fault {
		if c.Kind() == "PUT networkSecurityGroups" && raced.CompareAndSwap(false, true) {
			err := sim.AddRule(nsgVMNIC, armnetwork.SecurityRule{Name: to.Ptr("someone-else"), Properties: &armnetwork.SecurityRulePropertiesFormat{
				Access: to.Ptr(armnetwork.SecurityRuleAccessAllow), Direction: to.Ptr(armnetwork.SecurityRuleDirectionInbound),
				Priority: to.Ptr[int32](azurenet.DefaultAllowMin), Protocol: to.Ptr(armnetwork.SecurityRuleProtocolTCP),
				SourceAddressPrefix: to.Ptr("*"), SourcePortRange: to.Ptr("*"), DestinationAddressPrefix: to.Ptr("*"), DestinationPortRange: to.Ptr("80"),
			}})
			if err != nil {
				panic(err)
			}
		}
		return nil
	}})
	apply(t, d, nsgVMNIC, put(manyAllowRules(3)...))
	if c := sim.Calls(); c.ByKind["PUT networkSecurityGroups"] != 2 || c.ByKind["GET networkSecurityGroups"] < 2 {
		t.Errorf("calls %v: want a 412, a re-read and a second PUT", c.ByKind)
	}
	if _, ok := findRule(t, d, nsgVMNIC, "someone-else"); !ok {
		t.Error("the other writer's rule was lost")
	}
	for _, name := range []string{"jit-allow-000", "jit-allow-001", "jit-allow-002"} {
		if r, ok := findRule(t, d, nsgVMNIC, name); !ok || r.Priority == azurenet.DefaultAllowMin {
			t.Errorf("rule %s = %+v, %v: want it written beside the other writer's", name, r, ok)
		}
	}
}

func TestApplyRulesRetriesTransientFailures(t *testing.T) {
	tests := []struct {
		name   string
		target armsim.Target
		n      int
		fault  armsim.Fault
	}{
		{"429 on writes", armsim.Writes, 2, armsim.Throttled(5 * time.Millisecond)},
		{"429 on reads", armsim.Reads, 2, armsim.Throttled(5 * time.Millisecond)},
		{"409 AnotherOperationInProgress", armsim.Writes, 2, armsim.AnotherOperationInProgress()},
		{"500", armsim.Writes, 2, armsim.InternalServerError()},
		{"operation superseded", armsim.Writes, 1, armsim.LROFailed("CanceledAndSupersededDueToAnotherOperation")},
		{"operation failed", armsim.Writes, 2, armsim.LROFailed("InternalServerError")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim, d := newEnv(t, armsim.Options{InProgressPolls: 1})
			sim.FailNext(tt.target, tt.n, tt.fault)
			start := time.Now()
			apply(t, d, nsgVMNIC, put(manyAllowRules(2)...))
			if c := sim.Calls(); c.Faults != tt.n {
				t.Errorf("%d faults served, want %d", c.Faults, tt.n)
			}
			sim.FailNext(tt.target, tt.n, tt.fault)
			apply(t, d, nsgVMNIC, del("jit-allow-000", "jit-allow-001"))
			if names := sim.RuleNames(nsgVMNIC); !slices.Equal(names, []string{"allow-https"}) {
				t.Errorf("rules left: %v", names)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("took %v; retry delays should be tiny in tests", el)
			}
		})
	}
}
